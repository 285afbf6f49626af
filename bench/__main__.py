"""`python -m bench [NAME...]`: the benchmarks (all, or those named) in one session (one
Prefect server), then a summary."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from bench import (
    backup,
    cold_run,
    dashboard,
    dr,
    engine_overhead,
    failover,
    health_sweep,
    patching,
    schedule_accuracy,
    webhook,
    workers,
)
from bench.common import Result, session

BENCHMARKS: dict[str, Callable[[], Result]] = {
    "engine_overhead": engine_overhead.run,
    "cold_run": cold_run.run,
    "health_sweep": health_sweep.run,
    "schedule_accuracy": schedule_accuracy.run,
    "workers": workers.run,
    "webhook": webhook.run,
    "backup": backup.run,
    "patching": patching.run,
    "failover": failover.run,
    "dr": dr.run,
    "dashboard": dashboard.run,
}


def main() -> int:
    results: list[Result] = []
    failed: list[str] = []
    with session():
        chosen = sys.argv[1:] or list(BENCHMARKS)
        unknown = [n for n in chosen if n not in BENCHMARKS]
        if unknown:
            print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
            return 2
        for name in chosen:
            bench = BENCHMARKS[name]
            print(f"\n== {name} ==", flush=True)
            try:
                results.append(bench())
            except Exception:
                traceback.print_exc()
                failed.append(name)
    print("\n== summary ==")
    for result in results:
        print(result.headline)
    for name in failed:
        print(f"{name}: FAILED (see the traceback above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
