"""Engine overhead (SPEC §9): a 50-step runbook of trivial steps vs the same 50 tasks by hand.

Baseline: an async flow awaiting 50 trivial async `@task`s in sequence, each logging a message
with `get_run_logger()` (no cache policy, no result persistence, like ktlo's steps).
Candidate: a generated 50-step `log` runbook run through `flows.runbook.runbook_flow`, which
also loads and validates the runbook, writes every step to ktlo's store and audit trail and
publishes a summary artifact; all of that is part of what is measured. Both run in this
process against the same server, one warm-up run each, then alternating timed rounds; before
each timed run the server is left to finish recording the previous one (it records task runs
from events for about a second after a run), and the server CPU each kind of run costs is
measured separately. Then the same comparison as the operator waits for it, whole processes
with their imports (`bench.whole_process`): both figures are reported.

    python -m bench.engine_overhead
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench import whole_process
from bench.common import (
    Result,
    Timing,
    measure_alternating,
    ratio_line,
    rounds,
    server_cpu_s,
    session,
    wait_idle,
)

STEPS = 50
TARGET = 1.2


def write_runbook(directory: Path, steps: int = STEPS) -> Path:
    doc = {
        "name": f"bench-{steps}",
        "steps": [
            {"id": f"s{i:02d}", "uses": "log", "with": {"message": f"step {i}"}}
            for i in range(1, steps + 1)
        ],
    }
    path = directory / f"bench-{steps}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _calls(runbook: Path, steps: int) -> dict[str, Callable[[], object]]:
    """The three flows to time; Prefect is imported here, after the session set its API URL."""
    from prefect import flow, get_run_logger, task
    from prefect.cache_policies import NO_CACHE

    from flows.runbook import runbook_flow

    @task(name="log", cache_policy=NO_CACHE, persist_result=False)
    async def log_step(message: str) -> str:
        get_run_logger().info("%s", message)
        return message

    @flow(name="bench-hand-written")
    async def hand_written(n: int) -> None:
        for i in range(1, n + 1):
            await log_step(f"step {i}")

    @flow(name="bench-empty")
    async def empty() -> None:
        return None

    def completed(name: str, make: Callable[[], Any]) -> Callable[[], None]:
        def call() -> None:
            state = asyncio.run(make())
            if not state.is_completed():
                raise RuntimeError(f"{name} flow run ended {state.name}: {state.message}")

        return call

    return {
        "hand_written": completed("hand-written", lambda: hand_written(n=steps, return_state=True)),
        "ktlo": completed(
            "ktlo runbook", lambda: runbook_flow(runbook=str(runbook), return_state=True)
        ),
        "empty": completed("empty", lambda: empty(return_state=True)),
    }


def _server_cost(call: Callable[[], object], pid: int) -> float:
    """Server CPU seconds one run costs, counted until the server is idle again."""
    wait_idle(pid)
    before = server_cpu_s(pid)
    call()
    wait_idle(pid)
    return server_cpu_s(pid) - before


def run() -> Result:
    with session() as s:
        n = rounds()
        runbook = write_runbook(s.home)
        calls = _calls(runbook, STEPS)
        t = measure_alternating(calls, n, before=functools.partial(wait_idle, s.server_pid))
        server = {name: _server_cost(call, s.server_pid) for name, call in calls.items()}
        whole = whole_process.report(whole_process.measure(s, runbook, STEPS, n), STEPS)
        return _report(n, t, server, whole)


def _report(
    n: int, t: dict[str, Timing], server: dict[str, float], whole: dict[str, float]
) -> Result:
    base, cand, empty = t["hand_written"], t["ktlo"], t["empty"]
    print(
        f"samples (s): hand-written [{base.text()}]; ktlo [{cand.text()}]; empty [{empty.text()}]"
    )
    ratio = ratio_line(
        "engine overhead",
        f"ktlo {STEPS}-step runbook",
        cand.median,
        f"hand-written {STEPS} tasks",
        base.median,
        target=TARGET,
    )
    overhead_ms = (cand.median - base.median) / STEPS * 1000
    step_ktlo_ms = (cand.median - empty.median) / STEPS * 1000
    step_hand_ms = (base.median - empty.median) / STEPS * 1000
    print(
        f"per step: ktlo overhead {overhead_ms:+.1f} ms; cost of a step beyond an empty flow run "
        f"({empty.median:.2f} s): ktlo {step_ktlo_ms:.1f} ms vs hand-written {step_hand_ms:.1f} ms "
        f"(medians of {n} rounds after one warm-up each)"
    )
    print(
        f"server CPU per run (recording it, until idle): ktlo {server['ktlo']:.2f} s, "
        f"hand-written {server['hand_written']:.2f} s, empty flow {server['empty']:.2f} s"
    )
    result = Result(
        "engine_overhead",
        f"engine overhead: ktlo {cand.median:.2f} s vs hand-written {base.median:.2f} s "
        f"→ ratio {ratio:.2f} (target ≤ {TARGET:g}), {overhead_ms:+.1f} ms per step; whole "
        f"process (ktlo run vs python hand.py): wall {whole['whole_wall_ratio']:.2f}, "
        f"CPU {whole['whole_cpu_ratio']:.2f}",
        {
            "steps": STEPS,
            "rounds": n,
            "ktlo_s": round(cand.median, 4),
            "ktlo_min_s": round(cand.min, 4),
            "hand_written_s": round(base.median, 4),
            "hand_written_min_s": round(base.min, 4),
            "empty_flow_s": round(empty.median, 4),
            "ratio": round(ratio, 4),
            "target_ratio": TARGET,
            "overhead_ms_per_step": round(overhead_ms, 2),
            "server_cpu_s": {name: round(value, 3) for name, value in server.items()},
            **whole,
        },
    )
    result.emit()
    return result


if __name__ == "__main__":
    run()
