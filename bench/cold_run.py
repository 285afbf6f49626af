"""Cold `ktlo run` (SPEC §9): a one-step runbook on the embedded default, under 5 s wall.

Each `ktlo run <file>` is a new Python process (cold imports) with `PREFECT_API_URL` unset, so
ktlo finds the session's local server through `KTLO_HOME`, as it does for an operator once the
server runs. For context it also measures the one-off cost ktlo pays once per machine (the
first `ktlo run` in a fresh `KTLO_HOME`, which starts the server) and the baseline ktlo avoids:
the same one-step flow in Prefect's ephemeral mode, with a new and with an existing database.

    python -m bench.cold_run
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.common import (
    Result,
    Timing,
    child_env,
    measure,
    ratio_line,
    rounds,
    session,
    wait_idle,
)

TARGET_S = 5.0
TIMEOUT_S = 300
KTLO = str(Path(sys.executable).with_name("ktlo"))

EPHEMERAL_SCRIPT = """
from prefect import flow, get_run_logger, task

@task
def hello() -> str:
    get_run_logger().info("hello from the cold-run benchmark")
    return "hello"

@flow
def one_step() -> str:
    return hello()

raise SystemExit(0 if one_step(return_state=True).is_completed() else 1)
"""


def write_runbook(directory: Path) -> Path:
    doc = {
        "name": "bench-one-step",
        "steps": [
            {"id": "hello", "uses": "log", "with": {"message": "hello from the cold-run benchmark"}}
        ],
    }
    path = directory / "bench-one-step.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Wall time of one subprocess; a failed run is an error, not a timing."""
    started = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(argv[:2])} exited {proc.returncode}: {tail}")
    return elapsed


def _first_run_fresh_home(runbook: Path, home: Path) -> float:
    """The first `ktlo run` on a machine: starts the local server, then runs."""
    env = child_env(KTLO_HOME=str(home), KTLO_RUNBOOKS=str(home / "runbooks"))
    home.mkdir(parents=True)
    try:
        return timed([KTLO, "run", str(runbook)], env, home)
    finally:
        subprocess.run(
            [KTLO, "server", "stop"],
            env=env,
            cwd=home,
            capture_output=True,
            timeout=60,
            check=False,
        )


def _ephemeral(prefect_home: Path) -> float:
    env = child_env(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE="true",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    )
    prefect_home.mkdir(parents=True, exist_ok=True)
    return timed([sys.executable, "-c", EPHEMERAL_SCRIPT], env, prefect_home)


def run() -> Result:
    with session() as s:
        n = rounds()
        runbook = write_runbook(s.home)
        env = child_env(KTLO_HOME=str(s.home), KTLO_RUNBOOKS=str(s.home / "runbooks"))
        cold = measure(
            lambda: timed([KTLO, "run", str(runbook)], env, s.home),
            n,
            before=functools.partial(wait_idle, s.server_pid),
        )
        first = _first_run_fresh_home(runbook, s.home / "fresh-home")
        eph_new = _ephemeral(s.home / "ephemeral-prefect")
        eph_existing = _ephemeral(s.home / "ephemeral-prefect")
        return _report(n, cold, first, eph_new, eph_existing)


def _report(n: int, cold: Timing, first: float, eph_new: float, eph_existing: float) -> Result:
    print(f"samples (s): ktlo run [{cold.text()}] (after one untimed run)")
    print(
        f"cold run: ktlo run of a one-step runbook, local server running: {cold.median:.2f} s "
        f"median of {n} (min {cold.min:.2f} s) → {cold.median / TARGET_S:.2f} of the "
        f"{TARGET_S:g} s target ({'met' if cold.median <= TARGET_S else 'MISSED'})"
    )
    print(
        f"one-off: first ktlo run in a fresh KTLO_HOME (starts the server) {first:.2f} s, "
        f"i.e. ~{first - cold.median:.1f} s more than a run with the server up"
    )
    r_new = ratio_line(
        "cold run vs ephemeral",
        "ktlo run",
        cold.median,
        "Prefect ephemeral mode, new database",
        eph_new,
    )
    r_existing = ratio_line(
        "cold run vs ephemeral",
        "ktlo run",
        cold.median,
        "Prefect ephemeral mode, existing database",
        eph_existing,
    )
    result = Result(
        "cold_run",
        f"cold run: ktlo run {cold.median:.2f} s (target < {TARGET_S:g} s) vs ephemeral "
        f"{eph_new:.2f} s new DB / {eph_existing:.2f} s existing DB; first run with server "
        f"start {first:.2f} s",
        {
            "rounds": n,
            "ktlo_run_s": round(cold.median, 4),
            "ktlo_run_min_s": round(cold.min, 4),
            "target_s": TARGET_S,
            "first_run_with_server_start_s": round(first, 4),
            "ephemeral_new_db_s": round(eph_new, 4),
            "ephemeral_existing_db_s": round(eph_existing, 4),
            "ratio_vs_ephemeral_new_db": round(r_new, 4),
            "ratio_vs_ephemeral_existing_db": round(r_existing, 4),
        },
    )
    result.emit()
    return result


if __name__ == "__main__":
    run()
