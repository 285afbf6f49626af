"""The embedded Prefect server killed mid-run: a real local server of this test's own.

The session's shared server is never touched: this test starts one under its own
KTLO_HOME, kills it with SIGKILL while `ktlo run` is in a step, and starts it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx

from tests.helpers import KTLO, REPO
from tests.test_crashes import LONG, _alive, _wait_for


def _env(home: Path, runbooks: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(KTLO_HOME=str(home), KTLO_RUNBOOKS=str(runbooks), COLUMNS="200")
    return env


def _ktlo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KTLO, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def _server(home: Path) -> dict[str, object]:
    return dict(json.loads((home / "prefect" / "server.json").read_text()))


def _state(api: str, kind: str, run_id: str) -> list[str]:
    if kind == "flow":
        return [httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]["type"]]
    body = {"flow_runs": {"id": {"any_": [run_id]}}}
    task_runs = httpx.post(f"{api}/task_runs/filter", json=body, timeout=10).json()
    return [t["state"]["type"] for t in task_runs]


def test_lost_server_is_one_line_and_the_run_is_recorded_once_it_is_back(tmp_path: Path) -> None:
    home, runbooks = tmp_path / "home", tmp_path / "runbooks"
    runbooks.mkdir()
    pid_file = tmp_path / "step.pid"
    (runbooks / "long.yaml").write_text(LONG.format(path=pid_file).lstrip())
    env = _env(home, runbooks)
    started = _ktlo(env, "server", "start")
    assert started.returncode == 0, started.stderr
    try:
        server = _server(home)
        api = f"http://127.0.0.1:{server['port']}/api"
        # Prepared like any other server: the zombie-run automation is there.
        automations = httpx.post(f"{api}/automations/filter", json={}, timeout=10).json()
        assert any("heartbeat" in a["name"] for a in automations)

        runner = subprocess.Popen(
            [KTLO, "run", "long"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), "the step")
        step_pid = int(pid_file.read_text())
        history = json.loads(_ktlo(env, "history", "--json").stdout)["runs"]
        run_id = history[0]["id"]
        _wait_for(lambda: _state(api, "task", run_id) == ["RUNNING"], "the task run")

        os.killpg(int(str(server["pid"])), signal.SIGKILL)
        out, err = runner.communicate(timeout=120)  # a bound for a broken test, not a timing
        assert runner.returncode == 1
        lines = [line for line in (out + err).splitlines() if "error" in line.lower()]
        assert len(lines) == 1, out + err
        assert "lost the Prefect server" in lines[0]
        assert "Traceback" not in out + err
        _wait_for(lambda: not _alive(step_pid), "the step to die with its runner", 15)

        # With the server down, history already knows.
        down = _ktlo(env, "history", "--json")
        assert down.returncode == 0, down.stderr
        run = json.loads(down.stdout)["runs"][0]
        assert run["status"] == "crashed"
        assert "lost the Prefect server" in run["error"]

        # The server comes back on its port; Prefect then gets the run's final state.
        again = _ktlo(env, "server", "start")
        assert again.returncode == 0, again.stderr
        assert _server(home)["port"] == server["port"]
        assert _ktlo(env, "history").returncode == 0
        assert _state(api, "flow", run_id) == ["CRASHED"]
        assert _state(api, "task", run_id) == ["CRASHED"]
    finally:
        _ktlo(env, "server", "stop")
