"""The sweep as a whole flow run: a hanging target costs only its timeout; the task is
reusable in a hand-written Prefect flow."""

from __future__ import annotations

import asyncio
from typing import Any

from tasks.health.store import current_states
from tests.conftest import Home
from tests.health_helpers import hanging_server, service, sweep_runbook
from tests.test_health_alerting import sweep


def test_a_hanging_target_does_not_hold_up_the_runbook(home: Home, run: Any) -> None:
    with hanging_server() as hang, service() as svc:
        path = sweep_runbook(
            home,
            [
                {
                    "name": "stuck",
                    "type": "http",
                    "url": f"http://127.0.0.1:{hang.port}/",
                    "timeout_s": 1,
                },
                {
                    "name": "stuck-db",
                    "type": "mysql",
                    "dsn": f"mysql://root@127.0.0.1:{hang.port}/x",
                    "timeout_s": 1,
                },
                {"name": "fine", "type": "http", "url": f"{svc.url}/health", "timeout_s": 1},
            ],
            steps=[{"id": "after", "uses": "log", "needs": ["sweep"], "with": {"message": "next"}}],
        )
        results = sweep(run, path)
        assert hang.still_hanging  # the run finished while the target still had not answered
    assert results["stuck"]["error"] == "timed out after 1s"
    assert results["stuck-db"]["error"] == "timed out after 1s"
    assert results["fine"]["ok"] is True


def test_the_sweep_task_in_a_hand_written_flow(home: Home, prefect_api: str) -> None:
    from prefect import flow

    from tasks.health.sweep import health_sweep
    from tasks.health.sweep_input import SweepInput

    with service() as svc:

        @flow(name="my-own-monitoring")
        async def monitoring() -> Any:
            inputs = SweepInput.model_validate(
                {"checks": [{"name": "api", "type": "http", "url": f"{svc.url}/health"}]}
            )
            return await health_sweep(inputs)

        out = asyncio.run(monitoring())
    assert out.checks[0].state == "OK"
    assert [s.key for s in current_states()] == ["my-own-monitoring/health.sweep/api"]


def test_fail_on_failure_fails_the_step_after_recording(home: Home, run: Any) -> None:
    with service() as svc:
        path = sweep_runbook(
            home,
            [
                {"name": "ok", "type": "http", "url": f"{svc.url}/health"},
                {"name": "bad", "type": "http", "url": f"{svc.url}/status/502"},
            ],
            extra={"fail_on_failure": True},
            steps=[{"id": "after", "uses": "log", "with": {"message": "gated"}}],
        )
        result = run(path)
    assert result.status == "failed"
    assert result.steps["sweep"].error == "1 check(s) failed: bad"
    assert result.steps["after"].status == "not_run"
    states = {s.name: (s.state, s.last_health) for s in current_states()}
    assert states == {"ok": ("OK", "ok"), "bad": ("OK", "failing")}  # 1 of 3 failures so far
