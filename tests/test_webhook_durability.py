"""Nothing acknowledged is lost: bursts, a receiver killed mid-burst, the Prefect API down."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from ktlo.orchestration import local_server
from tests.conftest import Home
from tests.webhook_helpers import TOKEN, WebhookProcess, free_port

pytestmark = pytest.mark.timeout(900)


def _runbook(home: Home) -> str:
    name = f"burst-{uuid.uuid4().hex[:8]}"
    home.runbook(
        name,
        f"""
        name: {name}
        triggers:
          - source: generic
            match: {{team: ops}}
        steps:
          - id: note
            uses: log
            with: {{message: "{{{{ incident.summary }}}}"}}
        """,
    )
    return name


def _deploy(name: str) -> Any:
    """A deployment nobody serves: runs created for it stay Scheduled, which is what we count."""
    from flows.catalog import flow_for
    from ktlo.runbook.loader import find_runbook, load_runbook

    rb = load_runbook(find_runbook(name))
    return flow_for(rb).to_deployment(name=rb.name).apply()


def _flow_runs(deployment_id: Any, api_url: str | None = None) -> list[Any]:
    import asyncio

    from prefect.client.orchestration import PrefectClient, get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def read() -> list[Any]:
        client = PrefectClient(api=api_url) if api_url else get_client()
        async with client:
            found: list[Any] = []
            while True:
                batch = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                    limit=200,
                    offset=len(found),
                )
                found += batch
                if len(batch) < 200:
                    return found

    return asyncio.run(read())


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out: {what}")


def _store_counts() -> dict[str, int]:
    from ktlo.incidents.store import IncidentRecord, OutboxItem
    from ktlo.store.db import session

    with session() as s:
        incidents = list(s.exec(select(IncidentRecord)).all())
        outbox = list(s.exec(select(OutboxItem)).all())
    return {
        "incidents": len(incidents),
        "open": sum(1 for i in incidents if i.status == "open"),
        "resolved": sum(1 for i in incidents if i.status == "resolved"),
        "repeats": sum(i.repeats for i in incidents),
        "start_run": sum(1 for o in outbox if o.kind == "start_run"),
        "pending": sum(1 for o in outbox if o.status == "pending"),
    }


@pytest.fixture
def webhook(home: Home, prefect_api: str, tmp_path: Path) -> Iterator[Any]:
    started: list[WebhookProcess] = []

    def start(port: int | None = None, env: dict[str, str] | None = None) -> WebhookProcess:
        w = WebhookProcess(
            {**home.env, **(env or {})}, port or free_port(), tmp_path / "webhook.log"
        )
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop(signal.SIGKILL)


def test_burst_of_1000_alerts_gives_one_run_per_distinct_incident(home: Home, webhook: Any) -> None:
    name = _runbook(home)
    deployment_id = _deploy(name)
    receiver = webhook()
    distinct = [f"svc-{i}" for i in range(880)]
    bodies = [{"summary": f"{k} down", "dedup_key": k, "labels": {"team": "ops"}} for k in distinct]
    repeats = [dict(b) for b in random.Random(7).sample(bodies, 100)]  # 10% repeats
    resolutions = [{**b, "status": "resolved"} for b in bodies[:20]]  # and some resolutions
    plan = bodies + repeats
    random.Random(8).shuffle(plan)
    errors: list[str] = []

    def send(chunk: list[dict[str, Any]]) -> None:
        with httpx.Client(timeout=30, headers={"authorization": f"Bearer {TOKEN}"}) as client:
            for body in chunk:
                response = client.post(f"http://127.0.0.1:{receiver.port}/hooks/generic", json=body)
                if response.status_code != 202:
                    errors.append(f"{response.status_code} {response.text[:100]}")

    threads = [threading.Thread(target=send, args=(plan[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    send(resolutions)
    assert not errors, errors[:5]
    counts = _store_counts()
    assert counts["incidents"] == 880
    assert counts["repeats"] >= 100 - len(resolutions)  # a repeat after its resolution opens anew
    assert counts["resolved"] == 20
    runs = _wait(
        lambda: (r := _flow_runs(deployment_id)) and len(r) >= counts["start_run"] and r,
        300,
        "runs for every incident",
    )
    time.sleep(3)
    runs = _flow_runs(deployment_id)
    incident_ids = [r.parameters["incident"]["id"] for r in runs]
    assert len(incident_ids) == len(set(incident_ids)), "an incident started two runs"
    assert len(runs) == counts["start_run"] == counts["incidents"]


def test_receiver_killed_mid_burst_loses_no_acknowledged_incident(home: Home, webhook: Any) -> None:
    name = _runbook(home)
    deployment_id = _deploy(name)
    port = free_port()
    receiver = webhook(port)
    acked: list[str] = []
    stop = threading.Event()

    def fire() -> None:
        i = 0
        with httpx.Client(timeout=5, headers={"authorization": f"Bearer {TOKEN}"}) as client:
            while not stop.is_set():
                key = f"kill-{i}"
                i += 1
                try:
                    response = client.post(
                        f"http://127.0.0.1:{port}/hooks/generic",
                        json={"summary": key, "dedup_key": key, "labels": {"team": "ops"}},
                    )
                except httpx.HTTPError:
                    continue
                if response.status_code == 202:
                    acked.append(key)

    thread = threading.Thread(target=fire)
    thread.start()
    _wait(lambda: len(acked) >= 150, 60, "some acknowledged alerts")
    receiver.stop(signal.SIGKILL)
    stop.set()
    thread.join()
    webhook(port)  # restarted: works off what the killed one acknowledged
    expected = {f"generic:{k}" for k in acked}

    def started() -> Any:
        runs = _flow_runs(deployment_id)
        keys = [r.parameters["incident"]["key"] for r in runs]
        return keys if expected <= set(keys) else None

    keys = _wait(started, 240, "every acknowledged incident's run")
    assert len(keys) == len(set(keys)), "an incident was started twice"


def test_alerts_wait_while_the_prefect_api_is_down(
    home: Home, webhook: Any, tmp_path: Path
) -> None:
    from prefect.context import refresh_global_settings_context

    session_api = os.environ["PREFECT_API_URL"]
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api,
    }
    server_env.pop("PREFECT_API_URL", None)

    def start_server() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*local_server.server_command(port), "--no-services"],
            env=server_env,
            stdout=(tmp_path / "server.log").open("ab"),
            stderr=subprocess.STDOUT,
        )

        def up() -> bool:
            try:
                return httpx.get(f"{api}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(up, 180, "the Prefect server")
        return proc

    server = start_server()
    try:
        name = _runbook(home)
        os.environ["PREFECT_API_URL"] = api
        refresh_global_settings_context()
        deployment_id = _deploy(name)
        receiver = webhook(env={"PREFECT_API_URL": api})
        server.terminate()
        server.wait(timeout=30)
        for i in range(10):
            response = receiver.post(
                {"summary": f"down {i}", "dedup_key": f"down-{i}", "labels": {"team": "ops"}}
            )
            assert response.status_code == 202, response.text
        time.sleep(3)
        assert _store_counts()["pending"] >= 10  # waiting, not lost
        server = start_server()
        runs = _wait(
            lambda: len(r := _flow_runs(deployment_id, api)) >= 10 and r,
            120,
            "runs after the API returned",
        )
        assert sorted(r.parameters["incident"]["key"] for r in runs) == sorted(
            f"generic:down-{i}" for i in range(10)
        )
        assert (
            json.loads(httpx.get(f"http://127.0.0.1:{receiver.port}/healthz").text)["status"]
            == "ok"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        os.environ["PREFECT_API_URL"] = session_api  # the tests after this one use it
        refresh_global_settings_context()
