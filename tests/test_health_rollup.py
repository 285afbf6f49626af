"""The uptime history stays bounded: a year of minutely results leaves at most 24 x 8 hourly
and 400 daily buckets per check, and each bucket counts what happened in it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from ktlo.store.db import engine
from tasks.health import rollup
from tasks.health.store import BUCKET, DAY_S, HOUR_S, day_totals, hour_counts
from tests.health_helpers import store

__all__ = ["store"]  # a fixture: SQLite and PostgreSQL


def count(span: int) -> int:
    with engine().connect() as conn:
        return int(conn.execute(select(func.count()).where(BUCKET.c.span_s == span)).scalar_one())


def test_a_year_of_sweeps_keeps_a_bounded_history(store: str) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    # Two sweeps every 5 hours for 450 days (the counters grow, not the rows).
    for step in range(450 * 24 // 5):
        for minute in (0, 30):
            now = start + timedelta(hours=5 * step, minutes=minute)
            with engine().begin() as conn:
                rollup.add(conn, [rollup.Result("rb/s/api", "ok", False, 5.0)], now)
    assert count(HOUR_S) <= 24 * (rollup.HOURLY_KEEP_DAYS + 1)
    assert count(DAY_S) <= rollup.DAILY_KEEP_DAYS + 1
    assert count(DAY_S) >= rollup.DAILY_KEEP_DAYS  # nothing younger than retention is lost


def test_a_bucket_counts_its_results(store: str) -> None:
    now = datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
    results = [
        rollup.Result("rb/s/api", "ok", False, 10.0),
        rollup.Result("rb/s/api", "failing", False, None),
        rollup.Result("rb/s/api", "degraded", False, 30.0),
        rollup.Result("rb/s/api", "failing", True, 50.0),  # in maintenance: not failing
    ]
    for r in results:
        with engine().begin() as conn:
            rollup.add(conn, [r], now + timedelta(minutes=results.index(r)))
    with engine().connect() as conn:
        rows = conn.execute(select(BUCKET).order_by(BUCKET.c.span_s)).mappings().all()
    assert len(rows) == 2  # one hourly, one daily
    for row in rows:
        counts = (row["ok"], row["degraded"], row["failing"], row["maintenance"])
        assert counts == (1, 1, 1, 1)
        assert (row["ms_sum"], row["ms_max"], row["ms_n"]) == (90.0, 50.0, 3)
    assert rollup.bucket_start(now, HOUR_S) == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert rollup.bucket_start(now, DAY_S) == datetime(2026, 3, 1, tzinfo=UTC)

    # What the dashboard reads: the hour's worst result and counts, the day's sums.
    hour = rollup.bucket_start(now, HOUR_S)
    hourly = [tuple(r) for r in hour_counts([hour - timedelta(hours=1), hour])]
    assert hourly == [("rb/s/api", 1, "failing", 2, 3, 30.0)]
    day = rollup.bucket_start(now, DAY_S)
    assert day_totals({"7d": day - timedelta(days=6), "today": day}) == {
        "rb/s/api": {"7d": (2, 3), "today": (2, 3)}
    }
