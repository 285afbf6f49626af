"""Engine overhead as the operator waits for it: whole processes, imports and exit included.

`ktlo run` of the generated 50-step `log` runbook vs `python hand.py`, a script with the same
50 Prefect tasks in one flow, each a new process against the same running server (ktlo
finds it through `KTLO_HOME`, the script through `PREFECT_API_URL`). One warm-up each,
then alternating pairs; before each run the server is left to go idle. Wall time and the
child's own CPU time (user + system, from `wait4`) are both reported as ratios of medians.
Part of what `ktlo run` saves is Python's, not the engine's: its CLI freezes its objects at
exit (`gc.freeze`), so the interpreter's final collections skip them, while hand.py pays
them (about half a second of CPU here). `python -X importtime` shows what each side imports.

    python -m bench.whole_process          (also run by bench.engine_overhead)
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Session, child_env, ratio_line, wait_idle

KTLO = str(Path(sys.executable).with_name("ktlo"))
TARGET = 1.2

HAND_SCRIPT = """
import asyncio

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE


@task(name="log", cache_policy=NO_CACHE, persist_result=False)
async def log_step(message: str) -> str:
    get_run_logger().info("%s", message)
    return message


@flow(name="bench-hand-written")
async def hand_written(n: int) -> None:
    for i in range(1, n + 1):
        await log_step(f"step {i}")


state = asyncio.run(hand_written(n=STEPS, return_state=True))
raise SystemExit(0 if state.is_completed() else 1)
"""


@dataclass(frozen=True)
class Sample:
    wall_s: float
    cpu_s: float


def _timed(argv: list[str], env: dict[str, str], cwd: Path) -> Sample:
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(argv[:3])} exited {proc.returncode}: {tail}")
    return Sample(wall, usage.ru_utime + usage.ru_stime)


def measure(s: Session, runbook: Path, steps: int, n: int) -> dict[str, list[Sample]]:
    script = s.home / "hand.py"
    script.write_text(HAND_SCRIPT.replace("STEPS", str(steps)))
    quiet = {"PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING"}
    ktlo_env = child_env(
        KTLO_HOME=str(s.home), KTLO_RUNBOOKS=str(runbook.parent), PREFECT_API_URL=None, **quiet
    )
    hand_env = child_env(PREFECT_API_URL=s.api_url, **quiet)
    argv = {"ktlo": [KTLO, "run", runbook.stem], "hand": [sys.executable, str(script)]}
    env = {"ktlo": ktlo_env, "hand": hand_env}
    samples: dict[str, list[Sample]] = {"ktlo": [], "hand": []}
    for warmup in range(n + 1):
        for name in ("hand", "ktlo") if warmup % 2 == 0 else ("ktlo", "hand"):
            wait_idle(s.server_pid)
            sample = _timed(argv[name], env[name], s.home)
            if warmup:
                samples[name].append(sample)
    return samples


def report(samples: dict[str, list[Sample]], steps: int) -> dict[str, float]:
    ktlo, hand = samples["ktlo"], samples["hand"]
    text = "; ".join(
        f"{name} [" + ", ".join(f"{x.wall_s:.2f}/{x.cpu_s:.2f}" for x in values) + "]"
        for name, values in samples.items()
    )
    print(f"whole-process samples (wall/CPU s): {text}")
    wall = {k: statistics.median(x.wall_s for x in v) for k, v in samples.items()}
    cpu = {k: statistics.median(x.cpu_s for x in v) for k, v in samples.items()}
    what = f"whole process, {steps} steps"
    wall_ratio = ratio_line(
        f"{what}, wall", "ktlo run", wall["ktlo"], "python hand.py", wall["hand"], target=TARGET
    )
    cpu_ratio = ratio_line(
        f"{what}, CPU", "ktlo run", cpu["ktlo"], "python hand.py", cpu["hand"], target=TARGET
    )
    return {
        "whole_ktlo_wall_s": round(wall["ktlo"], 4),
        "whole_hand_wall_s": round(wall["hand"], 4),
        "whole_ktlo_cpu_s": round(cpu["ktlo"], 4),
        "whole_hand_cpu_s": round(cpu["hand"], 4),
        "whole_wall_ratio": round(wall_ratio, 4),
        "whole_cpu_ratio": round(cpu_ratio, 4),
        "whole_pairs": len(ktlo),
        "whole_hand_pairs": len(hand),
    }


if __name__ == "__main__":
    from bench.common import rounds, session
    from bench.engine_overhead import STEPS, write_runbook

    with session() as active:
        runbook = write_runbook(active.home / "runbooks")
        report(measure(active, runbook, STEPS, rounds()), STEPS)
