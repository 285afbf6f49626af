"""Advance every check's alert state for one sweep in one database transaction.

Two sweeps of the same runbook step may overlap (a slow sweep and the next scheduled one,
or two workers): the transaction takes a lock for the sweep's scope — an advisory
transaction lock on PostgreSQL, `BEGIN IMMEDIATE` on SQLite — so each reads the state the
other committed and a transition (and its notification) happens exactly once. Nothing slow
happens under the lock: notifications and remediation run after the commit, and their
outcome is written back in a second, short transaction (`finish`).
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, bindparam, delete, insert, select, text, update

from ktlo import secrets
from ktlo.store import audit
from ktlo.store.db import engine, session
from tasks.health import rollup
from tasks.health.checks import CheckBase
from tasks.health.results import ConditionOutcome, Remediation
from tasks.health.state import Health, Memory, Policy, Step, Suppression, advance
from tasks.health.store import CheckEvent, CheckState, check_key
from tasks.health.windows import active_window

_ADVISORY_NAMESPACE = 7352003
STATE: Table = CheckState.__table__  # type: ignore[attr-defined]
EVENT: Table = CheckEvent.__table__  # type: ignore[attr-defined]
# Remediation statuses worth an audit row: the start (or why not) and the final outcome.
AUDITED_REMEDIATION = frozenset(
    {"started", "not_deployed", "not_started", "completed", "failed", "crashed", "cancelled"}
)


@dataclass(frozen=True)
class Scope:
    """Where a sweep runs: its checks' state is keyed by runbook and step."""

    runbook: str
    step_id: str
    run_id: str | None = None
    url: str | None = None

    def key(self, name: str) -> str:
        return check_key(self.runbook, self.step_id, name)


@dataclass
class Judged:
    check: CheckBase
    health: Health
    conditions: list[ConditionOutcome]
    error: str | None
    duration_ms: float


@dataclass
class Decision:
    """One check after the transaction: its new state and what to do about it."""

    judged: Judged
    key: str
    step: Step
    suppressed: str | None
    event_id: int | None
    remediation: Remediation | None
    sent_to: list[str] = field(default_factory=list)
    failed_to: list[str] = field(default_factory=list)

    @property
    def check(self) -> CheckBase:
        return self.judged.check


def _order(judged: list[Judged]) -> list[Judged]:
    """Dependencies first, so a dependant sees its dependency's new state."""
    by_name = {j.check.name: j for j in judged}
    graph = {j.check.name: [d for d in j.check.depends_on if d in by_name] for j in judged}
    try:
        return [by_name[n] for n in graphlib.TopologicalSorter(graph).static_order()]
    except graphlib.CycleError:  # validation rejects cycles; never fail a sweep over one
        return judged


def _memory(row: dict[str, Any]) -> Memory:
    return Memory(
        state=row["state"],
        since=row["since"],
        streak_since=row["streak_since"],
        fail_streak=row["fail_streak"],
        bad_streak=row["bad_streak"],
        ok_streak=row["ok_streak"],
        good_streak=row["good_streak"],
        alerted=row["alerted"],
        last_notified_at=row["last_notified_at"],
    )


def _lock(conn: Connection, scope: Scope) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:ns, hashtext(:scope))"),
            {"ns": _ADVISORY_NAMESPACE, "scope": f"{scope.runbook}/{scope.step_id}"},
        )


def _remediation(row: dict[str, Any] | None) -> Remediation | None:
    if row is None or row["remediation_runbook"] is None:
        return None
    return Remediation(
        runbook=row["remediation_runbook"],
        status=row["remediation_status"] or "unknown",
        flow_run_id=row["remediation_run_id"],
        started_at=row["remediation_started_at"],
        error=row["remediation_error"],
    )


def record(scope: Scope, judged: list[Judged], now: datetime) -> list[Decision]:
    """Advance every check's state with its result; returns the decisions in check order.

    Core statements (one select, one executemany insert and update), not the ORM: a sweep
    of 1,000 checks writes 1,000 rows every minute.
    """
    keys = [scope.key(j.check.name) for j in judged]
    decisions: dict[str, Decision] = {}
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    events: list[tuple[str, dict[str, Any]]] = []
    results: list[rollup.Result] = []
    with engine().begin() as conn:
        _lock(conn, scope)
        found = conn.execute(select(STATE).where(STATE.c.key.in_(keys))).mappings()
        rows = {r["key"]: dict(r) for r in found}
        states: dict[str, str] = {}
        for j in _order(judged):
            check, key = j.check, scope.key(j.check.name)
            row = rows.get(key)
            window = active_window(check.maintenance, now)
            blocker = next((d for d in check.depends_on if states.get(d) == "FAILING"), None)
            kind: Suppression | None = (
                "maintenance" if window else "dependency" if blocker else None
            )
            reason = window or (f"depends on '{blocker}', which is FAILING" if blocker else None)
            policy = Policy(
                check.failure_threshold,
                check.success_threshold,
                check.remind_every_s,
                check.send_on_resolved,
            )
            step = advance(_memory(row) if row else Memory(), j.health, policy, now, kind)
            values = _values(step, j, check, scope, reason, now)
            if row is None:
                inserts.append(
                    {
                        **values,
                        "key": key,
                        "runbook": scope.runbook,
                        "step_id": scope.step_id,
                        "name": check.name,
                    }
                )
            else:
                updates.append({**values, "b_key": key})
            states[check.name] = step.memory.state
            if step.changed or step.notice:
                events.append((key, _event(key, check.name, step, reason, scope, now)))
            if step.changed:
                _audit(conn, key, step, j, reason, scope)
            decisions[key] = Decision(j, key, step, reason, None, _remediation(row))
            results.append(rollup.Result(key, j.health, kind == "maintenance", j.duration_ms))
        if inserts:
            conn.execute(insert(STATE), inserts)
        if updates:
            conn.execute(update(STATE).where(STATE.c.key == bindparam("b_key")), updates)
        rollup.add(conn, results, now)  # the uptime history
        # The sweep defines its checks: state of checks removed from it goes too.
        conn.execute(
            delete(STATE).where(
                STATE.c.runbook == scope.runbook,
                STATE.c.step_id == scope.step_id,
                STATE.c.key.not_in(keys),
            )
        )
        for key, event in events:
            decisions[key].event_id = conn.execute(
                insert(EVENT).returning(EVENT.c.id), event
            ).scalar_one()
    return [decisions[k] for k in keys]


def _values(
    step: Step, j: Judged, check: CheckBase, scope: Scope, reason: str | None, now: datetime
) -> dict[str, Any]:
    """The columns a sweep writes (remediation columns are written by `finish`)."""
    m = step.memory
    return {
        "check_type": check.type,  # type: ignore[attr-defined]
        "target": secrets.redact(check.target()),
        "state": m.state,
        "since": m.since or now,
        "streak_since": m.streak_since,
        "fail_streak": m.fail_streak,
        "bad_streak": m.bad_streak,
        "ok_streak": m.ok_streak,
        "good_streak": m.good_streak,
        "alerted": m.alerted,
        "last_notified_at": m.last_notified_at,
        "last_checked_at": now,
        "last_health": j.health,
        "last_duration_ms": j.duration_ms,
        "last_error": secrets.redact(j.error),
        "last_conditions": secrets.redact([c.model_dump() for c in j.conditions]),
        "suppressed": reason,
        "last_run_id": scope.run_id,
        "last_url": scope.url,
        "updated_at": now,  # remediation columns stay: the last episode's outcome is worth seeing
    }


def _event(
    key: str, name: str, step: Step, reason: str | None, scope: Scope, now: datetime
) -> dict[str, Any]:
    return {
        "key": key,
        "runbook": scope.runbook,
        "name": name,
        "ts": now,
        "from_state": step.previous,
        "to_state": step.memory.state,
        "notice": step.notice,
        "suppressed": reason,
        "sent_to": [],
        "failed_to": [],
        "run_id": scope.run_id,
    }


def _audit(
    conn: Connection, key: str, step: Step, j: Judged, reason: str | None, scope: Scope
) -> None:
    action = {"OK": "check.recovered", "DEGRADED": "check.degraded", "FAILING": "check.failing"}
    details: dict[str, Any] = {
        "from": step.previous,
        "to": step.memory.state,
        "failed_conditions": [
            f"{c.condition} (actual {c.actual})" for c in j.conditions if not c.ok
        ],
        "error": j.error,
        "suppressed": reason,
        "notice": step.notice,
    }
    audit.record(action[step.memory.state], key, details=details, run_id=scope.run_id, s=conn)


def finish(decisions: list[Decision], titles: dict[str, str]) -> None:
    """Write back what happened after the commit: deliveries and remediation runs."""
    touched = [d for d in decisions if d.event_id is not None or d.remediation is not None]
    if not touched:
        return
    with session() as s:
        for d in touched:
            if d.event_id is not None:
                event = s.get(CheckEvent, d.event_id)
                if event is not None:
                    event.sent_to, event.failed_to = list(d.sent_to), list(d.failed_to)
                    event.title = secrets.redact(titles.get(d.key))
                    s.add(event)
            r = d.remediation
            row = s.get(CheckState, d.key)
            if r is None or row is None:
                continue
            changed = (row.remediation_run_id, row.remediation_status) != (r.flow_run_id, r.status)
            row.remediation_runbook, row.remediation_run_id = r.runbook, r.flow_run_id
            row.remediation_status, row.remediation_started_at = r.status, r.started_at
            row.remediation_error = secrets.redact(r.error)
            s.add(row)
            if changed and r.status in AUDITED_REMEDIATION:
                audit.record(
                    f"check.remediation_{r.status}",
                    d.key,
                    details={"runbook": r.runbook, "flow_run_id": r.flow_run_id, "error": r.error},
                    s=s,
                )
