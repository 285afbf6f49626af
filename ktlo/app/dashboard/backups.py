"""The backups section: per source, the newest verified backup and its age against the
RPO of the `backup.freshness` steps that watch it, the size trend, the last restore."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ktlo.app.dashboard.model import Backup
from ktlo.store.audit import events
from tasks.backup import store

SIZES = 12  # backups in the size trend


def _rpos() -> dict[str, float]:
    """source → the strictest `max_age_s` of the valid runbooks' `backup.freshness` steps."""
    from ktlo.runbook.loader import load_all

    rpo: dict[str, float] = {}
    for runbook in load_all()[0]:
        for step in runbook.steps:
            if step.uses != "backup.freshness":
                continue
            inputs: dict[str, Any] = step.with_
            sources, max_age = inputs.get("source"), inputs.get("max_age_s")
            if not isinstance(max_age, int | float):
                continue  # templated: known only when the step runs
            for source in [sources] if isinstance(sources, str) else sources or []:
                rpo[source] = min(rpo.get(source, float(max_age)), float(max_age))
    return rpo


def _restores() -> dict[str, tuple[datetime, bool]]:
    """source → when it was last restored and whether that worked (the audit trail)."""
    last: dict[str, tuple[datetime, bool]] = {}
    for e in events(action_prefix="backup.restore", limit=1000):  # newest first
        if e.subject not in last and e.action in ("backup.restored", "backup.restore_failed"):
            last[e.subject] = (e.ts, e.action == "backup.restored")
    return last


def gather(now: datetime) -> list[Backup]:
    rows = store.entries()  # complete backups, newest first
    by_source: dict[str, list[store.Backup]] = {}
    for row in rows:
        by_source.setdefault(row.source, []).append(row)
    rpos, restores = _rpos(), _restores()
    out: list[Backup] = []
    for source, entries in sorted(by_source.items()):
        newest = next((e for e in entries if e.verify_status == "ok"), None)
        created = store.aware(newest.created_at) if newest else None
        age = (now - created).total_seconds() if created else None
        rpo = rpos.get(source)
        restored = restores.get(source)
        out.append(
            Backup(
                source=source,
                newest_id=newest.id if newest else None,
                newest_at=created,
                age_s=round(age, 1) if age is not None else None,
                max_age_s=rpo,
                fresh=None if rpo is None else age is not None and age <= rpo,
                sizes=[e.size or 0 for e in reversed(entries[:SIZES])],
                last_restore_at=store.aware(restored[0]) if restored else None,
                last_restore_ok=restored[1] if restored else None,
            )
        )
    return out
