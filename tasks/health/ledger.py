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

from sqlalchemy import text
from sqlmodel import Session, col, delete, select

from ktlo import audit, secrets
from ktlo.store.db import session
from ktlo.store.health import CheckEvent, CheckState, check_key
from tasks.health.checks import CheckBase
from tasks.health.results import ConditionOutcome, Remediation
from tasks.health.state import Health, Memory, Policy, Step, Suppression, advance
from tasks.health.windows import active_window

_ADVISORY_NAMESPACE = 7352003
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


def _memory(row: CheckState) -> Memory:
    return Memory(
        state=row.state,  # type: ignore[arg-type]
        since=row.since,
        streak_since=row.streak_since,
        fail_streak=row.fail_streak,
        bad_streak=row.bad_streak,
        ok_streak=row.ok_streak,
        good_streak=row.good_streak,
        alerted=row.alerted,
        last_notified_at=row.last_notified_at,
    )


def _lock(s: Session, scope: Scope) -> None:
    if s.get_bind().dialect.name == "postgresql":
        s.execute(
            text("SELECT pg_advisory_xact_lock(:ns, hashtext(:scope))"),
            {"ns": _ADVISORY_NAMESPACE, "scope": f"{scope.runbook}/{scope.step_id}"},
        )


def _remediation(row: CheckState) -> Remediation | None:
    if row.remediation_runbook is None:
        return None
    return Remediation(
        runbook=row.remediation_runbook,
        status=row.remediation_status or "unknown",
        flow_run_id=row.remediation_run_id,
        started_at=row.remediation_started_at,
        error=row.remediation_error,
    )


def record(scope: Scope, judged: list[Judged], now: datetime) -> list[Decision]:
    """Advance every check's state with its result; returns the decisions in check order."""
    keys = [scope.key(j.check.name) for j in judged]
    decisions: dict[str, Decision] = {}
    with session() as s:
        _lock(s, scope)
        rows = {
            r.key: r for r in s.exec(select(CheckState).where(col(CheckState.key).in_(keys))).all()
        }
        states: dict[str, str] = {}
        events: list[tuple[str, CheckEvent]] = []
        for j in _order(judged):
            check, key = j.check, scope.key(j.check.name)
            row = rows.get(key)
            if row is None:
                row = CheckState(
                    key=key,
                    runbook=scope.runbook,
                    step_id=scope.step_id,
                    name=check.name,
                    check_type=check.type,  # type: ignore[attr-defined]
                    since=now,
                )
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
            step = advance(_memory(row) if key in rows else Memory(), j.health, policy, now, kind)
            _write(row, step, j, check, scope, reason, now)
            s.add(row)
            states[check.name] = step.memory.state
            if step.changed or step.notice:
                events.append((key, _event(row, step, reason, scope, now)))
            if step.changed:
                _audit(s, key, step, j, reason, scope)
            decisions[key] = Decision(j, key, step, reason, None, _remediation(row))
        # The sweep defines its checks: state of checks removed from it goes too.
        s.execute(
            delete(CheckState).where(
                col(CheckState.runbook) == scope.runbook,
                col(CheckState.step_id) == scope.step_id,
                col(CheckState.key).not_in(keys),
            )
        )
        for _key, event in events:
            s.add(event)
        s.flush()
        for key, event in events:
            decisions[key].event_id = event.id
    return [decisions[k] for k in keys]


def _write(
    row: CheckState,
    step: Step,
    j: Judged,
    check: CheckBase,
    scope: Scope,
    reason: str | None,
    now: datetime,
) -> None:
    m = step.memory
    row.check_type = check.type  # type: ignore[attr-defined]
    row.target = secrets.redact(check.target())
    row.state, row.since, row.streak_since = m.state, m.since or now, m.streak_since
    row.fail_streak, row.bad_streak = m.fail_streak, m.bad_streak
    row.ok_streak, row.good_streak = m.ok_streak, m.good_streak
    row.alerted, row.last_notified_at = m.alerted, m.last_notified_at
    row.last_checked_at, row.last_health = now, j.health
    row.last_duration_ms, row.last_error = j.duration_ms, secrets.redact(j.error)
    row.last_conditions = secrets.redact([c.model_dump() for c in j.conditions])
    row.suppressed = reason
    row.last_run_id, row.last_url = scope.run_id, scope.url
    row.updated_at = now  # remediation fields stay: the last episode's outcome is worth seeing


def _event(
    row: CheckState, step: Step, reason: str | None, scope: Scope, now: datetime
) -> CheckEvent:
    return CheckEvent(
        key=row.key,
        runbook=scope.runbook,
        name=row.name,
        ts=now,
        from_state=step.previous,
        to_state=step.memory.state,
        notice=step.notice,
        suppressed=reason,
        run_id=scope.run_id,
    )


def _audit(s: Session, key: str, step: Step, j: Judged, reason: str | None, scope: Scope) -> None:
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
    audit.record(action[step.memory.state], key, details=details, run_id=scope.run_id, s=s)


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
