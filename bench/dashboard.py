"""The dashboard for 1,000 checks with 30 days of minutely history (target ≤ 300 ms).

The store holds what 30 days of one result a minute per check leave behind after the
rollup's retention: per check 24 x 8 hourly buckets and 30 daily ones (60 and 1,440
results each, some failing), plus the checks' current state. Timed, server-side, the way
`/dashboard` and `/api/dashboard` answer:

- gather: the page's data from the store (states, the last 24 hourly buckets, 7/30-day sums);
- HTML: gather + Jinja2 render (the operator page, with 24,000 bar cells and 1,000 charts);
- JSON: gather + `model_dump_json` of the same data; the HTML/JSON ratio is printed.

The target is judged on CPU time (what the page costs the server); wall time is printed
beside it with the load average, because on a shared machine it mostly measures the wait
for a CPU.

Also printed: one sweep's rollup write (1,000 checks, an upsert of 2,000 bucket rows) and
the bytes a bucket row takes in SQLite, indexes included (so the growth per check per day).

    python -m bench.dashboard
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.common import Result, ratio_line, rounds

CHECKS = int(os.environ.get("KTLO_BENCH_CHECKS", 1000))
TARGET_MS = 300.0
HOURS, DAYS = 24 * 8, 30


def _fill(now: Any) -> int:
    """Current states and buckets for CHECKS checks; returns the number of bucket rows."""
    from sqlalchemy import insert

    from ktlo.store.db import engine
    from tasks.health.rollup import bucket_start
    from tasks.health.store import BUCKET, DAY_S, HOUR_S, CheckState

    state = CheckState.__table__  # type: ignore[attr-defined]
    hour0, day0 = bucket_start(now, HOUR_S), bucket_start(now, DAY_S)
    states, buckets = [], []
    for i in range(CHECKS):
        key = f"bench/sweep/check-{i:04d}"
        failing = i % 50 == 0
        states.append(
            {
                "key": key,
                "runbook": f"bench-{i % 10}",
                "step_id": "sweep",
                "name": f"check-{i:04d}",
                "check_type": "http",
                "target": f"GET http://10.0.{i // 250}.{i % 250}/health",
                "state": "FAILING" if failing else "OK",
                "since": now,
                "last_checked_at": now,
                "last_health": "failing" if failing else "ok",
                "last_duration_ms": 12.5,
                "last_error": "connection refused" if failing else None,
                "last_conditions": [],
                "updated_at": now,
            }
        )
        for h in range(HOURS):
            bad = 60 if (i * 7 + h) % 97 == 0 else int((i + h) % 3 == 0)
            buckets.append(_bucket(key, HOUR_S, hour0 - timedelta(hours=h), 60 - bad, bad))
        for d in range(DAYS):
            bad = (i + d) % 5
            buckets.append(_bucket(key, DAY_S, day0 - timedelta(days=d), 1440 - bad, bad))
    with engine().begin() as conn:
        conn.execute(insert(state), states)
        for start in range(0, len(buckets), 20_000):
            conn.execute(insert(BUCKET), buckets[start : start + 20_000])
    return len(buckets)


def _bucket(key: str, span: int, start: Any, ok: int, failing: int) -> dict[str, Any]:
    n = ok + failing
    return {
        "key": key,
        "span_s": span,
        "start": start,
        "ok": ok,
        "degraded": 0,
        "failing": failing,
        "maintenance": 0,
        "ms_sum": 12.5 * n,
        "ms_max": 40.0,
        "ms_n": n,
    }


def _sweep_write(now: Any) -> float:
    """Seconds for one sweep's rollup of CHECKS results (in its own transaction)."""
    from ktlo.store.db import engine
    from tasks.health import rollup

    results = [
        rollup.Result(f"bench/sweep/check-{i:04d}", "ok", False, 10.0) for i in range(CHECKS)
    ]
    started = time.perf_counter()
    with engine().begin() as conn:
        rollup.add(conn, results, now)
    return time.perf_counter() - started


def run() -> Result:
    home = Path(tempfile.mkdtemp(prefix="ktlo-bench-dashboard-"))
    saved = {k: os.environ.get(k) for k in ("KTLO_HOME", "KTLO_DATABASE_URL", "KTLO_RUNBOOKS")}
    os.environ.update(KTLO_HOME=str(home), KTLO_RUNBOOKS=str(home / "runbooks"))
    os.environ.pop("KTLO_DATABASE_URL", None)
    from ktlo.settings import reload_settings
    from ktlo.store.db import reset_engines

    reload_settings()
    reset_engines()
    try:
        return _run(home)
    finally:
        reset_engines()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        reload_settings()


def _measure(
    calls: dict[str, Callable[[], object]], n: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU (this thread's) milliseconds per call, alternating, one warm-up.

    CPU time is what a page costs the server; wall time also holds the waits for a CPU on
    a shared machine (the load average is printed beside it).
    """
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for call in calls.values():
        call()
    for _ in range(n):
        for name, call in calls.items():
            w, c = time.perf_counter(), time.thread_time()
            call()
            cpu[name].append((time.thread_time() - c) * 1000)
            wall[name].append((time.perf_counter() - w) * 1000)
    return (
        {k: statistics.median(v) for k, v in wall.items()},
        {k: statistics.median(v) for k, v in cpu.items()},
    )


def _bucket_bytes(home: Path) -> int:
    """Bytes of the bucket table and its indexes (SQLite's dbstat, on its own connection)."""
    import sqlite3

    with sqlite3.connect(home / "ktlo.db") as db:
        names = [
            r[0]
            for r in db.execute(
                "SELECT name FROM sqlite_master WHERE tbl_name = 'ktlo_check_bucket'"
            )
        ]
        marks = ",".join("?" * len(names))
        query = f"SELECT SUM(pgsize) FROM dbstat WHERE name IN ({marks})"
        return int(db.execute(query, names).fetchone()[0])


def _run(home: Path) -> Result:
    from ktlo.app.dashboard import pages, render
    from ktlo.store.models import utcnow

    now = utcnow()
    rows = _fill(now)
    per_row = _bucket_bytes(home) / rows
    write_s = _sweep_write(now)

    page = pages.operator_page(now)
    assert len(page.checks) == CHECKS
    calls: dict[str, Callable[[], object]] = {
        "gather": lambda: pages.operator_page(now),
        "html": lambda: render.operator_html(pages.operator_page(now)),
        "json": lambda: pages.operator_page(now).model_dump_json(),
        "html_only": lambda: render.operator_html(page),
        "json_only": lambda: page.model_dump_json(),
        "public": lambda: render.public_html(pages.public_page(now)),
    }
    wall, cpu = _measure(calls, rounds(5))
    size_kib = len(render.operator_html(page).encode()) / 1024
    load = os.getloadavg()[0]
    verdict = "met" if cpu["html"] <= TARGET_MS else "MISSED"
    print(
        f"dashboard, {CHECKS} checks x 30 days of minutely results ({rows} bucket rows), "
        f"median of {rounds(5)}: page (gather + HTML) {cpu['html']:.0f} ms CPU, "
        f"{wall['html']:.0f} ms wall at load average {load:.1f} on {os.cpu_count()} CPUs "
        f"(target ≤ {TARGET_MS:.0f} ms: {verdict}); gather alone {cpu['gather']:.0f} ms CPU; "
        f"public page {cpu['public']:.0f} ms CPU; HTML {size_kib:.0f} KiB",
        flush=True,
    )
    ratio = ratio_line(
        "dashboard page vs the same data as JSON (both gathered, CPU time)",
        "HTML",
        cpu["html"] / 1000,
        "JSON",
        cpu["json"] / 1000,
    )
    render_ratio = ratio_line(
        "rendering alone (CPU time)",
        "HTML",
        cpu["html_only"] / 1000,
        "JSON",
        cpu["json_only"] / 1000,
    )
    per_day = 25 * per_row  # 24 hourly rows and one daily row per check per day
    print(
        f"rollup: one sweep of {CHECKS} checks writes its buckets in {write_s * 1000:.0f} ms; "
        f"a bucket row takes ~{per_row:.0f} bytes in SQLite (with its key): "
        f"~{per_day / 1024:.1f} KiB per check per day, at most "
        f"~{(24 * 8 + 400) * per_row / 1024:.0f} KiB per check after retention",
        flush=True,
    )
    headline = f"dashboard {CHECKS} checks: {cpu['html']:.0f} ms CPU (HTML/JSON {ratio:.2f})"
    return Result(
        "dashboard",
        headline,
        {
            "page_cpu_ms": round(cpu["html"], 1),
            "page_wall_ms": round(wall["html"], 1),
            "gather_cpu_ms": round(cpu["gather"], 1),
            "json_cpu_ms": round(cpu["json"], 1),
            "load_average": round(load, 1),
            "ratio_html_json": round(ratio, 2),
            "ratio_render_only": round(render_ratio, 2),
            "bucket_row_bytes": round(per_row),
            "sweep_rollup_ms": round(write_s * 1000, 1),
        },
    )


if __name__ == "__main__":
    run().emit()
