"""Uptime history: each sweep's results folded into hourly and daily buckets per check.

Keeping every result would grow without bound (1,000 minutely checks: 525 million rows a
year). A bucket holds counters instead: results ok / degraded / failing / in maintenance and
the response time's sum, maximum and count. Every sweep adds to the current hour's and the
current day's bucket of each check (an upsert, in the sweep's transaction) and deletes
buckets past their retention. So a check has at most 24 * `HOURLY_KEEP_DAYS` hourly and
`DAILY_KEEP_DAYS` daily rows, however often it runs (docs/dashboard.md has the bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, func
from sqlalchemy.dialects import postgresql, sqlite

from tasks.health.state import Health
from tasks.health.store import BUCKET, DAY_S, HOUR_S

HOURLY_KEEP_DAYS = 8  # the 24 h bar and chart need one day; a week of hours for a look back
DAILY_KEEP_DAYS = 400  # 30-day uptime, and a year of daily history
COUNTERS = ("ok", "degraded", "failing", "maintenance", "ms_sum", "ms_max", "ms_n")


@dataclass(frozen=True)
class Result:
    key: str
    health: Health
    maintenance: bool  # inside a maintenance window: not counted in uptime
    duration_ms: float | None


def bucket_start(ts: datetime, span_s: int) -> datetime:
    """The start of the bucket `ts` falls in (UTC, aligned to the span)."""
    epoch = int(ts.timestamp())
    return datetime.fromtimestamp(epoch - epoch % span_s, UTC)


def _row(r: Result, span_s: int, now: datetime) -> dict[str, Any]:
    timed = r.duration_ms is not None
    return {
        "key": r.key,
        "span_s": span_s,
        "start": bucket_start(now, span_s),
        "ok": int(r.health == "ok" and not r.maintenance),
        "degraded": int(r.health == "degraded" and not r.maintenance),
        "failing": int(r.health == "failing" and not r.maintenance),
        "maintenance": int(r.maintenance),
        "ms_sum": r.duration_ms if timed else 0.0,
        "ms_max": r.duration_ms if timed else 0.0,
        "ms_n": int(timed),
    }


def add(conn: Connection, results: list[Result], now: datetime) -> None:
    """Add one sweep's results to their buckets and drop buckets past retention."""
    if not results:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(BUCKET)
    new = stmt.excluded
    totals: dict[str, Any] = {c: BUCKET.c[c] + new[c] for c in COUNTERS if c != "ms_max"}
    # greatest() is max() in SQLite's scalar form
    greatest = "greatest" if dialect is postgresql else "max"
    totals["ms_max"] = getattr(func, greatest)(BUCKET.c.ms_max, new.ms_max)
    upsert = stmt.on_conflict_do_update(index_elements=["span_s", "start", "key"], set_=totals)
    conn.execute(upsert, [_row(r, span, now) for span in (HOUR_S, DAY_S) for r in results])
    for span, days in ((HOUR_S, HOURLY_KEEP_DAYS), (DAY_S, DAILY_KEEP_DAYS)):
        cutoff = bucket_start(now - timedelta(days=days), span)
        conn.execute(delete(BUCKET).where(BUCKET.c.span_s == span, BUCKET.c.start < cutoff))
