"""Remediation runbooks started from a real deployment once per failing episode, their
outcome recorded with the check; secrets kept out of results, store, notices and artifacts;
the per-sweep table artifact."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any
from uuid import UUID

import pytest
from sqlmodel import select

from ktlo.store import audit
from ktlo.store.db import session
from tasks.health.store import CheckEvent, CheckState, current_states
from tests.conftest import Home
from tests.health_helpers import free_port, messages, service, sweep_runbook
from tests.helpers import Receiver
from tests.test_health_alerting import sweep, target


def deploy(home: Home, name: str, *, fail: bool = False) -> str:
    """A remediation runbook with a deployment on the session's Prefect server."""
    from flows.catalog import flow_for
    from ktlo.runbook.loader import load_runbook

    command = '[sh, -c, "exit 1"]' if fail else '[sh, -c, "exit 0"]'
    path = home.runbook(
        name,
        f"""
        name: {name}
        steps:
          - id: fix
            uses: shell
            with: {{command: {command}}}
        """,
    )
    rb = load_runbook(path)
    return str(flow_for(rb).to_deployment(name=rb.name).apply())


def runs_of(deployment_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def read() -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[UUID(deployment_id)])
                )
            )

    return asyncio.run(read())


def execute(home: Home, flow_run_id: str) -> Any:
    """Run a created flow run in this process, as a worker would."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow_async

    from flows.catalog import flow_for
    from ktlo.runbook.loader import find_runbook, load_runbook

    async def go() -> Any:
        async with get_client() as client:
            flow_run = await client.read_flow_run(UUID(flow_run_id))
            assert flow_run.deployment_id is not None
            deployment = await client.read_deployment(flow_run.deployment_id)
        flow = flow_for(load_runbook(find_runbook(deployment.name)))
        return await run_flow_async(flow, flow_run=flow_run, return_type="state")

    return asyncio.run(go())


def test_remediation_starts_once_per_failing_episode_and_records_its_outcome(
    home: Home, run: Any, receiver: Receiver
) -> None:
    fix = f"restart-orders-{uuid.uuid4().hex[:6]}"
    deployment = deploy(home, fix)
    with service() as svc:
        svc.stop()
        path = sweep_runbook(
            home,
            [
                {
                    "name": "orders",
                    "type": "tcp",
                    "host": "127.0.0.1",
                    "port": svc.port,
                    "failure_threshold": 1,
                    "success_threshold": 1,
                    "remediate": fix,
                    "alert": target(receiver),
                }
            ],
        )
        first = sweep(run, path)["orders"]
        assert first["remediation"]["status"] == "started"
        run_id = first["remediation"]["flow_run_id"]
        assert (
            f"Remediation: runbook {fix} started (flow run {run_id})"
            in messages(receiver)[0]["message"]
        )

        second = sweep(run, path)["orders"]  # still failing: no second run
        assert second["remediation"]["flow_run_id"] == run_id
        assert second["remediation"]["status"] == "scheduled"
        (created,) = runs_of(deployment)
        assert str(created.id) == run_id
        assert "ktlo-remediation" in created.tags

        assert execute(home, run_id).is_completed()
        third = sweep(run, path)["orders"]
        assert third["remediation"]["status"] == "completed"
        (row,) = current_states("hc")
        assert (row.remediation_runbook, row.remediation_run_id) == (fix, run_id)
        assert row.remediation_status == "completed"

        svc.start()  # recovered; a new failing episode gets a new remediation run
        assert sweep(run, path)["orders"]["state"] == "OK"
        svc.stop()
        fourth = sweep(run, path)["orders"]
    assert fourth["remediation"]["status"] == "started"
    assert fourth["remediation"]["flow_run_id"] != run_id
    assert len(runs_of(deployment)) == 2
    actions = [e.action for e in reversed(audit.events(action_prefix="check.remediation"))]
    assert actions == [
        "check.remediation_started",
        "check.remediation_completed",
        "check.remediation_started",
    ]


def test_failed_remediation_is_recorded(home: Home, run: Any) -> None:
    fix = f"broken-fix-{uuid.uuid4().hex[:6]}"
    deploy(home, fix, fail=True)
    path = sweep_runbook(
        home,
        [
            {
                "name": "db",
                "type": "tcp",
                "host": "127.0.0.1",
                "port": free_port(),
                "failure_threshold": 1,
                "remediate": fix,
            }
        ],
    )
    run_id = sweep(run, path)["db"]["remediation"]["flow_run_id"]
    assert execute(home, run_id).is_failed()
    assert sweep(run, path)["db"]["remediation"]["status"] == "failed"


def test_remediation_without_a_deployment_is_reported_not_raised(
    home: Home, run: Any, receiver: Receiver
) -> None:
    fix = f"never-deployed-{uuid.uuid4().hex[:6]}"
    home.runbook(fix, f"name: {fix}\nsteps:\n  - id: x\n    uses: log\n    with: {{message: x}}\n")
    path = sweep_runbook(
        home,
        [
            {
                "name": "db",
                "type": "tcp",
                "host": "127.0.0.1",
                "port": free_port(),
                "failure_threshold": 1,
                "remediate": fix,
                "alert": target(receiver),
            }
        ],
    )
    result = sweep(run, path)["db"]
    assert result["state"] == "FAILING"
    assert result["remediation"] == {
        "runbook": fix,
        "status": "not_deployed",
        "flow_run_id": None,
        "started_at": None,
        "error": f"runbook '{fix}' has no deployment: run `ktlo serve` or `prefect deploy --all`",
    }
    assert (
        f"Remediation: runbook {fix} not_deployed: runbook '{fix}' has no deployment"
        in (messages(receiver)[0]["message"])
    )
    assert audit.events(action_prefix="check.remediation_not_deployed")


def test_secrets_stay_out_of_results_store_notices_and_artifacts(
    home: Home, run: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = "Sup3r-S3cret-Pa55"
    closed = free_port()
    monkeypatch.setenv(
        "KTLO_SECRET_ORDERS_DB", f"postgresql://app:{password}@127.0.0.1:{closed}/orders"
    )
    monkeypatch.setenv("KTLO_SECRET_CACHE", f"redis://:{password}@127.0.0.1:{closed}/0")
    monkeypatch.setenv("KTLO_SECRET_MARIA", f"mysql://app:{password}@127.0.0.1:{closed}/shop")
    path = sweep_runbook(
        home,
        [
            {
                "name": "orders-db",
                "type": "postgres",
                "dsn": "{{ secret('orders-db') }}",
                "query": "SELECT 1",
            },
            {"name": "cache", "type": "redis", "url": "{{ secret('cache') }}"},
            {"name": "shop-db", "type": "mysql", "dsn": "{{ secret('maria') }}"},
            {
                "name": "inline",
                "type": "http",
                "url": f"http://admin:{password}@127.0.0.1:{closed}/health",
            },
        ],
        extra={"defaults": {"failure_threshold": 1, "alert": target(receiver)}},
    )
    result = run(path)
    output = result.steps["sweep"].output
    targets = {c["name"]: c["target"] for c in output["checks"]}
    assert targets == {
        "orders-db": f"postgresql://127.0.0.1:{closed}/orders",
        "cache": f"redis://127.0.0.1:{closed}/0",
        "shop-db": f"mysql://127.0.0.1:{closed}/shop",
        "inline": f"GET http://127.0.0.1:{closed}/health",
    }
    assert all(c["state"] == "FAILING" for c in output["checks"])
    assert len(messages(receiver)) == 4

    with session() as s:
        stored = [r.model_dump() for r in s.exec(select(CheckState)).all()]
        stored += [e.model_dump() for e in s.exec(select(CheckEvent)).all()]
    seen = {
        "output": json.dumps(output),
        "store": json.dumps(stored, default=str),
        "audit": json.dumps([e.model_dump() for e in audit.events()], default=str),
        "notices": json.dumps(messages(receiver)),
        "artifact": json.dumps(artifact("health-hc-sweep").data),
    }
    for where, text in seen.items():
        assert password not in text, where
        assert "app:" not in text, where


def artifact(key: str) -> Any:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> Any:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1
            )
            return found[0]

    return asyncio.run(read())


def test_each_sweep_publishes_a_table_artifact(home: Home, run: Any) -> None:
    with service() as svc:
        path = sweep_runbook(
            home,
            [
                {"name": "api", "type": "http", "url": f"{svc.url}/health"},
                {
                    "name": "broken",
                    "type": "http",
                    "url": f"{svc.url}/status/500",
                    "failure_threshold": 1,
                },
            ],
            name="hc-artifact",
        )
        result = run(path)
    found = artifact("health-hc-artifact-sweep")
    assert found.type == "table"
    assert str(found.flow_run_id) == result.run.id
    rows = json.loads(found.data) if isinstance(found.data, str) else found.data
    assert [r["check"] for r in rows] == ["broken", "api"]  # failing first
    assert rows[0]["state"] == "FAILING"
    assert rows[0]["detail"] == "status < 300 (actual 500)"
    assert set(rows[0]) == {"check", "state", "this probe", "latency_ms", "since", "detail"}
    assert "1 OK, 1 FAILING (broken)" in found.description
