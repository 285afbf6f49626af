"""`python -m bench`: every benchmark in one session (one Prefect server), then a summary."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable

from bench import (
    backup,
    cold_run,
    engine_overhead,
    health_sweep,
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
}


def main() -> int:
    results: list[Result] = []
    failed: list[str] = []
    with session():
        for name, bench in BENCHMARKS.items():
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
