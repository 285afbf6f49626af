"""The checks section: current states (tasks.health.store) with their uptime history
(the hourly and daily buckets of tasks.health.rollup).

Uptime is the share of counted results that were up (ok or degraded; results inside a
maintenance window are not counted): 24 h from the last 24 hourly buckets, 7 d and 30 d
from the last 7 and 30 daily buckets (UTC days, today included).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ktlo.app.dashboard.model import (
    Bar,
    CellState,
    Check,
    CheckView,
    Group,
    PublicCheck,
    Uptime,
    utc,
)
from tasks.health.rollup import bucket_start
from tasks.health.store import DAY_S, HOUR_S, day_totals, hour_counts, state_rows

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


def view(row: Any) -> CheckView:
    """Maintenance or a FAILING dependency holds a check's alerts back: say which."""
    if row.suppressed:
        # tasks.health.ledger words a dependency's suppression "depends on '<check>', …"
        if row.suppressed.startswith("depends on "):
            return CheckView.SUPPRESSED
        return CheckView.MAINTENANCE
    return CheckView(row.state)


@dataclass
class _Hours:
    """One check's last 24 hours: one list per attribute, one item per hour."""

    states: list[str] = field(default_factory=lambda: [CellState.NONE] * BAR_CELLS)
    up: list[int] = field(default_factory=lambda: [0] * BAR_CELLS)
    counted: list[int] = field(default_factory=lambda: [0] * BAR_CELLS)
    ms: list[float | None] = field(default_factory=lambda: [None] * BAR_CELLS)


def gather(now: datetime) -> list[Check]:
    """Every check, worst first, with its bar (one cell per hour of the last 24)."""
    first_hour = bucket_start(now, HOUR_S) - timedelta(hours=BAR_CELLS - 1)
    today = bucket_start(now, DAY_S)
    hourly: dict[str, _Hours] = defaultdict(_Hours)
    # 24,000 rows for 1,000 checks: plain assignments, the arithmetic was done in SQL
    for key, i, worst, up, counted, ms in hour_counts(
        [first_hour + timedelta(hours=i) for i in range(BAR_CELLS)]
    ):
        if i >= 0:
            h = hourly[key]
            h.states[i], h.up[i], h.counted[i], h.ms[i] = worst, up, counted, ms
    days = day_totals({"7d": today - timedelta(days=6), "30d": today - timedelta(days=29)})
    checks = [
        _check(row, first_hour, hourly.get(row.key) or _Hours(), days.get(row.key, {}))
        for row in state_rows()
    ]
    checks.sort(key=lambda c: (ORDER[c.state], c.runbook, c.name))
    return checks


def _check(
    row: Any, first_hour: datetime, hours: _Hours, days: dict[str, tuple[int, int]]
) -> Check:
    bar = Bar(
        start=first_hour,
        span_s=HOUR_S,
        states=hours.states,
        up=hours.up,
        counted=hours.counted,
    )
    uptime = Uptime(
        h24=percent(sum(hours.up), sum(hours.counted)),
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
        response_ms=hours.ms,
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
