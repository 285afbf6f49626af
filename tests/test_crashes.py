"""Runs whose process dies: real `ktlo run` processes killed with SIGKILL, real step children.

Nothing here kills the session's shared Prefect server (tests/test_lost_server.py starts
its own for that).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from uuid import UUID

from tests.conftest import Home
from tests.helpers import KTLO, REPO, cli

LONG = """
name: long
steps:
  - id: wait
    uses: shell
    with:
      command: ["sh", "-c", "echo $$ > {path}; exec sleep 300"]
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().split(")")[-1].split()[0] != "Z"


def _wait_for(predicate: object, what: str, limit_s: float = 90) -> None:
    """Poll until `predicate()` is true; the limit only stops a broken test from hanging."""
    deadline = time.monotonic() + limit_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def _start_run(home: Home, name: str) -> subprocess.Popen[str]:
    env = {**os.environ, **home.env}
    return subprocess.Popen(
        [KTLO, "run", name],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _history(home: Home) -> dict[str, object]:
    done = cli("history", "--json", "-n", "1", env=home.env)
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)["runs"]
    return runs[0] if runs else {}


async def _prefect_states(flow_run_id: str) -> tuple[str, list[str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        flow_run = await client.read_flow_run(UUID(flow_run_id))
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )
    assert flow_run.state is not None
    return flow_run.state.type.value, [t.state.type.value for t in task_runs if t.state]


def test_killed_run_takes_its_step_along_and_history_says_crashed(
    prefect_api: str, home: Home, tmp_path: Path
) -> None:
    pid_file = tmp_path / "step.pid"
    home.runbook("long", LONG.format(path=pid_file))
    runner = _start_run(home, "long")
    _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the step to start")
    step_pid = int(pid_file.read_text())
    assert _alive(step_pid)
    run_id = str(_history(home)["id"])
    _wait_for(
        lambda: asyncio.run(_prefect_states(run_id))[1] == ["RUNNING"],
        "Prefect to record the step's task run as Running",
    )

    runner.send_signal(signal.SIGKILL)
    runner.wait()
    # The kernel kills the step with its runner (parent-death signal); no orphan under pid 1.
    _wait_for(lambda: not _alive(step_pid), "the step's process to die with its runner", 15)

    # `ktlo history` finds the dead run (after its 10 s grace) and closes it everywhere.
    _wait_for(lambda: _history(home).get("status") == "crashed", "history to say crashed")
    run = _history(home)
    assert run["id"] == run_id
    assert "died" in str(run["error"])
    flow_state, task_states = asyncio.run(_prefect_states(run_id))
    assert flow_state == "CRASHED"
    assert task_states == ["CRASHED"]


TIMES_OUT = """
name: times-out
steps:
  - id: slow
    uses: shell
    timeout_s: 1
    with:
      command: sleep 30
  - id: fails
    uses: shell
    needs: []
    with:
      command: ["sh", "-c", "exit 3"]
"""


def test_timeouts_and_step_failures_are_one_line(prefect_api: str, home: Home) -> None:
    home.runbook("times-out", TIMES_OUT)
    done = cli("run", "times-out", env=home.env)
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "timed out after 1s" in output
    assert "exit code 3" in output
    assert "Traceback" not in output, output
    assert 'File "' not in output

    debug = cli("run", "times-out", env={**home.env, "KTLO_DEBUG": "1"})
    assert debug.returncode == 1
    assert "Traceback" in debug.stdout + debug.stderr


def test_a_backup_that_times_out_is_one_line(prefect_api: str, home: Home, tmp_path: Path) -> None:
    """The backup's worker thread fails after the step was cancelled: no "never retrieved"."""
    from tests.test_backup_directory import _bulk

    src = _bulk(tmp_path / "bulk")
    home.runbook(
        "too-slow",
        f"""
        name: too-slow
        steps:
          - id: backup
            uses: backup.directory
            timeout_s: 0.3
            with: {{path: "{src}"}}
        """,
    )
    done = cli("run", "too-slow", env=home.env)
    output = done.stdout + done.stderr
    assert done.returncode == 1
    assert "timed out after 0.3s" in output
    assert "Traceback" not in output, output
