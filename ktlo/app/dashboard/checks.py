"""The checks section: current states (tasks.health.store) with their uptime history
(the hourly and daily buckets of tasks.health.rollup).

Uptime is the share of counted results that were up (ok or degraded; results inside a
maintenance window are not counted): 24 h from the last 24 hourly buckets, 7 d and 30 d
from the last 7 and 30 daily buckets (UTC days, today included).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from ktlo.app.dashboard.model import (
    Cell,
    CellState,
    Check,
    CheckView,
    Group,
    PublicCheck,
    Uptime,
    utc,
)
from tasks.health.rollup import bucket_start
from tasks.health.store import DAY_S, HOUR_S, CheckState, buckets_since, current_states, day_totals

BAR_CELLS = 24  # one per hour
WORST = {"FAILING": 0, "DEGRADED": 1, "OK": 2}
ORDER = {
    CheckView.FAILING: 0,
    CheckView.DEGRADED: 1,
    CheckView.SUPPRESSED: 2,
    CheckView.MAINTENANCE: 3,
    CheckView.OK: 4,
}


def percent(up: int, counted: int) -> float | None:
    return round(100.0 * up / counted, 2) if counted else None


def view(row: CheckState) -> CheckView:
    """Maintenance or a FAILING dependency holds a check's alerts back: say which."""
    if row.suppressed:
        # tasks.health.ledger words a dependency's suppression "depends on '<check>', …"
        if row.suppressed.startswith("depends on "):
            return CheckView.SUPPRESSED
        return CheckView.MAINTENANCE
    return CheckView(row.state)


def _cell(start: datetime, b: Any | None) -> Cell:
    if b is None:
        return Cell(start=start, state=CellState.NONE)
    up = b.ok + b.degraded
    counted = up + b.failing
    state = (
        CellState.FAILING
        if b.failing
        else CellState.DEGRADED
        if b.degraded
        else CellState.OK
        if b.ok
        else CellState.MAINTENANCE
    )
    return Cell(start=start, state=state, up=up, counted=counted)


def gather(now: datetime) -> list[Check]:
    """Every check, worst first, with its bar (one cell per hour of the last 24)."""
    first_hour = bucket_start(now, HOUR_S) - timedelta(hours=BAR_CELLS - 1)
    today = bucket_start(now, DAY_S)
    hours = [first_hour + timedelta(hours=i) for i in range(BAR_CELLS)]
    origin = first_hour.timestamp()
    hourly: dict[str, list[Any | None]] = defaultdict(lambda: [None] * BAR_CELLS)
    for b in buckets_since(HOUR_S, first_hour):
        start = utc(b.start)
        assert start is not None
        index = int((start.timestamp() - origin) // HOUR_S)
        if 0 <= index < BAR_CELLS:
            hourly[b.key][index] = b
    days = day_totals({"7d": today - timedelta(days=6), "30d": today - timedelta(days=29)})
    checks = [
        _check(row, hours, hourly.get(row.key), days.get(row.key, {})) for row in current_states()
    ]
    checks.sort(key=lambda c: (ORDER[c.state], c.runbook, c.name))
    return checks


def _check(
    row: CheckState,
    hours: list[datetime],
    buckets: list[Any | None] | None,
    days: dict[str, tuple[int, int]],
) -> Check:
    buckets = buckets or [None] * BAR_CELLS
    bar = [_cell(start, b) for start, b in zip(hours, buckets, strict=True)]
    response = [round(b.ms_sum / b.ms_n, 1) if b is not None and b.ms_n else None for b in buckets]
    uptime = Uptime(
        h24=percent(sum(c.up for c in bar), sum(c.counted for c in bar)),
        d7=percent(*days.get("7d", (0, 0))),
        d30=percent(*days.get("30d", (0, 0))),
    )
    remediation = None
    if row.remediation_runbook:
        remediation = f"{row.remediation_runbook}: {row.remediation_status}"
    return Check(
        name=row.name,
        state=view(row),
        uptime=uptime,
        bar=bar,
        key=row.key,
        runbook=row.runbook,
        type=row.check_type,
        target=row.target,
        since=utc(row.since),
        last_checked_at=utc(row.last_checked_at),
        latency_ms=row.last_duration_ms,
        response_ms=response,
        last_error=row.last_error,
        suppressed=row.suppressed,
        run_url=row.last_url,
        remediation=remediation,
    )


def overall(checks: list[Check]) -> CheckView:
    states = {c.state for c in checks}
    for worst in (CheckView.FAILING, CheckView.DEGRADED):
        if worst in states:
            return worst
    return CheckView.OK


def public(checks: list[Check]) -> list[Group]:
    """Checks grouped by runbook, names and states only (nothing a stranger should see)."""
    groups: dict[str, list[PublicCheck]] = {}
    for c in sorted(checks, key=lambda c: (c.runbook, c.name)):
        groups.setdefault(c.runbook, []).append(
            PublicCheck(name=c.name, state=c.state, uptime=c.uptime, bar=c.bar)
        )
    return [Group(name=name, checks=items) for name, items in groups.items()]


def find(checks: list[Check], ref: str) -> Check | list[Check] | None:
    """A check by key (runbook/step/name) or by name; a list when the name is ambiguous."""
    by_key = [c for c in checks if c.key == ref]
    matches = by_key or [c for c in checks if c.name == ref]
    if len(matches) > 1:
        return matches
    return matches[0] if matches else None
