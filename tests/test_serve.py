"""`ktlo serve` against a real Prefect server: typed deployments, runs, schedules, reload, shutdown."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Home
from tests.serve_helpers import Served, deployment, start_run, wait_final, wait_until

TYPED = """
name: restart
description: Restart a service.
parameters:
  service: {type: string, enum: [api, worker], description: Which service}
  batch: {type: integer, default: 2, minimum: 1, maximum: 5, description: Hosts at a time}
steps:
  - id: go
    uses: log
    with: {message: "restart {{ params.service }} x{{ params.batch }}"}
"""


@pytest.fixture
def served(home: Home, prefect_api: str) -> Any:
    started: list[Served] = []

    def start(*args: str) -> Served:
        s = Served(home.env, *args)
        started.append(s)
        s.wait_for("serving ", timeout=90)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.stop(signal.SIGKILL)


def _history(run_id: Any) -> Any:
    from ktlo.store.runs import get_run, steps_of

    return get_run(str(run_id)), steps_of(str(run_id))


def test_deployment_has_the_typed_form_and_runs_from_the_api(home: Home, served: Any) -> None:
    home.runbook("restart", TYPED)
    served()
    dep = deployment("restart")
    props = dep.parameter_openapi_schema["properties"]
    assert props["service"]["enum"] == ["api", "worker"]
    assert props["service"]["description"] == "Which service"
    assert props["batch"]["maximum"] == 5
    assert dep.enforce_parameter_schema
    run_id = start_run("restart", {"service": "worker", "batch": 3})
    final = wait_final(run_id)
    assert final.state.is_completed(), final.state
    run, steps = _history(run_id)
    assert run.trigger == "deployment"
    assert run.params == {"service": "worker", "batch": 3}
    assert steps[0].output == {"message": "restart worker x3"}


def test_invalid_form_values_are_rejected(home: Home, served: Any) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    home.runbook("restart", TYPED)
    served()
    with pytest.raises(PrefectHTTPStatusError) as info:
        start_run("restart", {"service": "database", "batch": 9})
    assert info.value.response.status_code == 409
    assert "service" in info.value.response.text


def test_schedule_fires(home: Home, served: Any) -> None:
    home.runbook(
        "every5",
        "name: every5\nschedule: {interval_s: 5}\nsteps:\n  - id: s\n    uses: log\n    with: {message: tick}\n",
    )
    served()
    from ktlo.store.runs import recent_runs

    runs = wait_until(
        lambda: [r for r in recent_runs("every5") if r.status == "succeeded"], 40, "a scheduled run"
    )
    assert runs[0].trigger == "schedule"


def test_reload_adds_updates_keeps_invalid_and_removes(home: Home, served: Any) -> None:
    first = home.runbook(
        "first", "name: first\nsteps:\n  - id: s\n    uses: log\n    with: {message: one}\n"
    )
    server = served()
    assert deployment("first") is not None
    home.runbook("second", TYPED.replace("name: restart", "name: second"))
    wait_until(lambda: deployment("second"), 30, "the new runbook's deployment")
    first.write_text(
        "name: first\nparameters:\n  n: {type: integer, default: 1}\nsteps:\n  - id: s\n    uses: log\n    with: {message: one}\n"
    )
    wait_until(
        lambda: "n" in deployment("first").parameter_openapi_schema["properties"],
        30,
        "updated schema",
    )
    first.write_text("name: first\nsteps:\n  - id: s\n    uses: nosuch\n")
    server.wait_for("unknown step type 'nosuch'", 30)
    assert deployment("first") is not None  # the last good deployment stays
    first.unlink()
    wait_until(lambda: deployment("first") is None, 30, "the removed runbook's deployment to go")


def test_sigterm_lets_runs_in_flight_finish(home: Home, served: Any) -> None:
    home.runbook(
        "slow",
        "name: slow\nsteps:\n  - id: s\n    uses: shell\n    with: {command: [sleep, '4']}\n",
    )
    server = served("--grace", "60")
    run_id = start_run("slow")
    wait_until(lambda: _history(run_id)[0], 30, "the run to start")
    assert server.stop(signal.SIGTERM) == 0
    run, _ = _history(run_id)
    assert run.status == "succeeded"
    assert "shutting down" in server.output


def test_runs_still_running_after_the_grace_period_are_recorded_as_cancelled(
    home: Home, served: Any
) -> None:
    home.runbook(
        "stuck",
        "name: stuck\nsteps:\n  - id: s\n    uses: shell\n    with: {command: [sleep, '120']}\n",
    )
    server = served("--grace", "1")
    run_id = start_run("stuck")
    wait_until(lambda: _history(run_id)[0], 30, "the run to start")
    server.stop(signal.SIGTERM)
    final = wait_final(run_id, 30)
    assert final.state.type.value in ("CANCELLED", "CRASHED")
    run, _ = _history(run_id)
    assert run.status in ("cancelled", "crashed")


def test_a_killed_run_is_recorded_as_crashed_and_retried(
    home: Home, served: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "crashed-once"
    home.runbook(
        "fragile",
        f"""
        name: fragile
        retry_crashed: 1
        steps:
          - id: maybe-die
            uses: shell
            with:
              shell: true
              command: 'if [ ! -e {marker} ]; then touch {marker}; kill -9 $PPID; sleep 5; fi; echo survived'
        """,
    )
    served()
    run_id = start_run("fragile")
    final = wait_final(run_id, 60)
    assert final.state.type.value == "CRASHED"
    from ktlo.store.runs import recent_runs

    def two_runs() -> Any:
        runs = recent_runs("fragile")
        return runs if len(runs) == 2 and all(r.status != "running" for r in runs) else None

    runs = wait_until(two_runs, 60, "the crashed run to be retried")
    statuses = sorted(r.status for r in runs)
    assert statuses == ["crashed", "succeeded"]
    from ktlo.store.audit import events

    assert [e.run_id for e in events(action_prefix="run.retried")] == [str(run_id)]
    time.sleep(1)
