"""Health-check state and alert history (written by `health.sweep`, read by `ktlo status`).

A check is keyed by `runbook/step/name`, so two runbooks (or two sweep steps) with a check
of the same name keep separate state. Rows hold redacted data only: never a DSN or a URL
with credentials, only the check's credential-free target.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Table, Text, case, func
from sqlalchemy import select as sa_select
from sqlmodel import Field, SQLModel, col, select

from ktlo.store.db import session
from ktlo.store.models import utcnow


def check_key(runbook: str, step_id: str, name: str) -> str:
    return f"{runbook}/{step_id}/{name}"


class CheckState(SQLModel, table=True):
    """The current alert state of one check and its last result."""

    __tablename__ = "ktlo_check_state"

    key: str = Field(primary_key=True, max_length=512)
    runbook: str = Field(index=True, max_length=128)
    step_id: str = Field(max_length=128)
    name: str = Field(max_length=200)
    check_type: str = Field(max_length=16)
    target: str = Field(default="", sa_column=Column(Text))

    state: str = Field(default="OK", max_length=16)  # OK | DEGRADED | FAILING
    since: datetime = Field(default_factory=utcnow)
    streak_since: datetime | None = None
    fail_streak: int = 0
    bad_streak: int = 0
    ok_streak: int = 0
    good_streak: int = 0
    alerted: bool = False
    last_notified_at: datetime | None = None

    last_checked_at: datetime = Field(default_factory=utcnow)
    last_health: str = Field(default="ok", max_length=16)  # ok | degraded | failing
    last_duration_ms: float | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    last_conditions: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    suppressed: str | None = Field(default=None, sa_column=Column(Text))
    last_run_id: str | None = Field(default=None, max_length=64)
    last_url: str | None = Field(default=None, max_length=512)

    remediation_runbook: str | None = Field(default=None, max_length=128)
    remediation_run_id: str | None = Field(default=None, max_length=64)
    remediation_status: str | None = Field(default=None, max_length=32)
    remediation_error: str | None = Field(default=None, sa_column=Column(Text))
    remediation_started_at: datetime | None = None

    updated_at: datetime = Field(default_factory=utcnow)


class CheckEvent(SQLModel, table=True):
    """A transition or notification of a check: the alert history."""

    __tablename__ = "ktlo_check_event"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(index=True, max_length=512)
    runbook: str = Field(max_length=128)
    name: str = Field(max_length=200)
    ts: datetime = Field(default_factory=utcnow, index=True)
    from_state: str = Field(max_length=16)
    to_state: str = Field(max_length=16)
    notice: str | None = Field(default=None, max_length=16)  # failing|degraded|resolved|reminder
    suppressed: str | None = Field(default=None, sa_column=Column(Text))
    sent_to: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    failed_to: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    run_id: str | None = Field(default=None, max_length=64)
    title: str | None = Field(default=None, sa_column=Column(Text))


def current_states(runbook: str | None = None) -> list[CheckState]:
    with session() as s:
        query = select(CheckState)
        if runbook:
            query = query.where(CheckState.runbook == runbook)
        return list(s.exec(query.order_by(col(CheckState.key))).all())


def state_rows() -> list[Any]:
    """Every check's current state as plain rows (no ORM objects, no conditions): what a
    page of 1,000 checks needs, several times faster to read than `current_states`."""
    t = CheckState.__table__.c  # type: ignore[attr-defined]
    query = sa_select(
        t.key, t.runbook, t.name, t.check_type, t.target, t.state, t.since,
        t.last_checked_at, t.last_duration_ms, t.last_error, t.suppressed, t.last_url,
        t.remediation_runbook, t.remediation_status,
    ).order_by(t.key)  # fmt: skip
    with session() as s:
        return list(s.connection().execute(query).all())


def recent_events(key: str | None = None, limit: int = 50) -> list[CheckEvent]:
    with session() as s:
        query = select(CheckEvent)
        if key:
            query = query.where(CheckEvent.key == key)
        return list(s.exec(query.order_by(col(CheckEvent.id).desc()).limit(limit)).all())


HOUR_S, DAY_S = 3600, 86400


class CheckBucket(SQLModel, table=True):
    """How one check's results went in one hour or one day: the uptime history.

    Written by every sweep (`tasks.health.rollup`), one hourly and one daily row per check
    per bucket, counters added up; old buckets are deleted (hourly after `HOURLY_KEEP_DAYS`,
    daily after `DAILY_KEEP_DAYS`), so a check's history stays bounded however often it runs.
    """

    __tablename__ = "ktlo_check_bucket"
    # Clustered by span and time (SQLite: WITHOUT ROWID): a page reads every check's
    # buckets of one period, and retention deletes the oldest; both are one range scan.
    __table_args__ = {"sqlite_with_rowid": False}

    span_s: int = Field(primary_key=True)  # HOUR_S or DAY_S
    start: datetime = Field(primary_key=True)  # UTC, aligned to the span
    key: str = Field(primary_key=True, max_length=512)
    ok: int = 0
    degraded: int = 0
    failing: int = 0
    maintenance: int = 0  # results inside a maintenance window: not counted in uptime
    ms_sum: float = 0.0
    ms_max: float = 0.0
    ms_n: int = 0


BUCKET: Table = CheckBucket.__table__  # type: ignore[attr-defined]


def hour_counts(hours: list[datetime]) -> list[Any]:
    """Every check's buckets of the given hours, as rows of `key`, `hour` (the index into
    `hours`), `worst` (failing | degraded | ok | maintenance), `up` (ok or degraded),
    `counted` (maintenance is not) and `ms` (the average response time, or null).

    The database does the per-bucket arithmetic and turns each start into its index:
    parsing 24,000 stored times back into datetimes would cost more than the whole query.
    """
    b = BUCKET.c
    worst = case(
        (b.failing > 0, "failing"),
        (b.degraded > 0, "degraded"),
        (b.ok > 0, "ok"),
        else_="maintenance",
    )
    query = sa_select(
        b.key,
        case({h: i for i, h in enumerate(hours)}, value=b.start, else_=-1).label("hour"),
        worst.label("worst"),
        (b.ok + b.degraded).label("up"),
        (b.ok + b.degraded + b.failing).label("counted"),
        case((b.ms_n > 0, b.ms_sum / b.ms_n), else_=None).label("ms"),
    ).where(b.span_s == HOUR_S, b.start >= min(hours))
    with session() as s:
        return list(s.connection().execute(query).all())


def day_totals(since: dict[str, datetime]) -> dict[str, dict[str, tuple[int, int]]]:
    """check key → window name → (results up, results counted), from daily buckets.

    `since` names each window's first day, e.g. {"7d": …, "30d": …}. Summed by the
    database: a page for 1,000 checks must not fetch 30,000 rows to add them up.
    """
    up = BUCKET.c.ok + BUCKET.c.degraded
    counted = up + BUCKET.c.failing
    columns = []
    for start in since.values():
        inside = BUCKET.c.start >= start
        columns += [
            func.sum(case((inside, up), else_=0)),
            func.sum(case((inside, counted), else_=0)),
        ]
    query = (
        sa_select(BUCKET.c.key, *columns)
        .where(BUCKET.c.span_s == DAY_S, BUCKET.c.start >= min(since.values()))
        .group_by(BUCKET.c.key)
    )
    with session() as s:
        rows = s.connection().execute(query).all()
    names = list(since)
    return {
        row[0]: {
            n: (int(row[1 + 2 * i] or 0), int(row[2 + 2 * i] or 0)) for i, n in enumerate(names)
        }
        for row in rows
    }
