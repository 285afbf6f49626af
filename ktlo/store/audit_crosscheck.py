"""Runs and step records must have their audit rows (see `ktlo.store.runs`).

Every run writes `run.started` (and `run.finished` once it has ended) and every step record
a `step.<status>` row of its run, in the same transaction. So runs without those rows mean
audit rows were deleted, even when the chain itself was emptied or cut and re-headed.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

# Each query names the first run that lacks audit rows it must have, oldest first.
_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "has no run.started audit row",
        """SELECT r.id, r.runbook FROM ktlo_run r
           WHERE NOT EXISTS (SELECT 1 FROM ktlo_audit a
                             WHERE a.run_id = r.id AND a.action = 'run.started')
           ORDER BY r.started_at LIMIT 1""",
    ),
    (
        "has finished but has no run.finished audit row",
        """SELECT r.id, r.runbook FROM ktlo_run r
           WHERE r.finished_at IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM ktlo_audit a
                             WHERE a.run_id = r.id AND a.action = 'run.finished')
           ORDER BY r.started_at LIMIT 1""",
    ),
    (
        "has more step records than step audit rows",
        """SELECT r.id, r.runbook FROM ktlo_run r
           JOIN (SELECT run_id, COUNT(*) AS n FROM ktlo_step_run GROUP BY run_id) s
             ON s.run_id = r.id
           WHERE s.n > (SELECT COUNT(*) FROM ktlo_audit a
                        WHERE a.run_id = r.id AND a.action LIKE 'step.%')
           ORDER BY r.started_at LIMIT 1""",
    ),
)


def runs_without_audit(conn: Connection) -> str | None:
    """One line naming the first run whose audit rows are missing, or None."""
    for what, query in _CHECKS:
        row = conn.execute(text(query)).first()
        if row is not None:
            return f"run {row[0]} ({row[1]}) {what} (its audit rows were deleted?)"
    return None
