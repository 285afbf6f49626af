"""A poisoned outbox item is dead-lettered, not retried forever: the real Prefect server of
the test session refuses an event (422), the dispatcher records it once as dead, sends the
rest of the batch, and `ktlo incidents` and `/healthz` show it. Oversized label sets are
trimmed so that Prefect takes the event."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import pytest
from sqlmodel import select

from tests.conftest import Home
from tests.helpers import cli
from tests.webhook_helpers import Receiver, alertmanager, prom_alert

LABELS = 2000  # Prefect takes at most 500 labels per resource


def _drain() -> None:
    """Run the real dispatcher until nothing is pending (or a minute has passed)."""
    from ktlo.incidents.outbox import Dispatcher
    from ktlo.incidents.store import OutboxStatus, count_outbox

    async def work() -> None:
        dispatcher = Dispatcher()
        task = asyncio.create_task(dispatcher.run_forever(idle_s=0.2))
        deadline = time.monotonic() + 60
        while count_outbox(OutboxStatus.PENDING) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        dispatcher.stopping = True
        dispatcher.wake()
        await task

    asyncio.run(work())


def _outbox() -> list[Any]:
    from ktlo.incidents.store import OutboxItem
    from ktlo.store.db import session

    with session() as s:
        return list(s.exec(select(OutboxItem)).all())


def _events_of(prefect_api: str, resource_id: str) -> list[dict[str, Any]]:
    body = {"filter": {"resource": {"id": [resource_id]}}, "limit": 10}
    deadline = time.monotonic() + 30
    while True:  # the server stores received events asynchronously
        found = httpx.post(f"{prefect_api}/events/filter", json=body, timeout=30).json()["events"]
        if found or time.monotonic() > deadline:
            return list(found)
        time.sleep(0.3)


def test_a_refused_event_is_dead_lettered_and_the_rest_go_out(
    home: Home, prefect_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    from ktlo.incidents.store import OutboxItem, OutboxStatus, WorkKind
    from ktlo.store.db import session

    receiver = Receiver()
    alert = prom_alert("Huge", "fp-huge", instance="x")
    alert["labels"].update({f"label_{i:05d}": f"value {i}" for i in range(LABELS)})
    response = receiver.post("alertmanager", alertmanager(alert))
    assert response.status_code == 202, response.text
    incident_id = response.json()["incidents"][0]["id"]
    [opened] = _outbox()
    # an item the API will never take: Prefect refuses event names over 1,024 characters
    with session() as s:
        s.add(
            OutboxItem(
                incident_id=incident_id,
                kind=WorkKind.EVENT,
                target="ktlo.incident." + "x" * 1100,
                payload=opened.payload,
            )
        )
        s.commit()

    with caplog.at_level(logging.WARNING, logger="ktlo.incidents.outbox"):
        _drain()
        _drain()  # a second dispatcher life: the dead item is not tried again
    by_target = {o.target: o for o in _outbox()}
    assert by_target["ktlo.incident.opened"].status == OutboxStatus.DONE
    dead = by_target["ktlo.incident." + "x" * 1100]
    assert dead.status == OutboxStatus.DEAD
    assert dead.attempts == 1
    assert dead.error is not None
    assert "422" in dead.error
    assert len(dead.error) <= 500
    refusals = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(refusals) == 1
    assert len(refusals[0].getMessage()) < 1000

    # the trimmed event reached Prefect
    [event] = _events_of(prefect_api, f"ktlo.incident.{incident_id}")
    assert len(event["resource"]) <= 500
    assert event["resource"]["alertname"] == "Huge"
    assert event["payload"]["incident"]["left_out"]["labels"] > 0
    assert "raw" not in event["payload"]["incident"]

    health = httpx.get(f"{receiver.url}/healthz", timeout=10).json()
    receiver.close()
    assert health["outbox_dead"] == 1
    listed = cli("incidents", env=home.env)
    assert listed.returncode == 0, listed.stderr
    assert "dead-lettered" in listed.stdout
    data = json.loads(cli("incidents", "--json", env=home.env).stdout)
    assert [d["incident_id"] for d in data["outbox_dead"]] == [incident_id]


def test_retries_back_off_with_a_cap() -> None:
    from ktlo.incidents import delivery

    class Refusal(Exception):
        response = httpx.Response(503)

    unreachable = [delivery.retry_delay(ConnectionError(), n) for n in range(1, 40)]
    answered = [delivery.retry_delay(Refusal(), n) for n in range(1, 40)]
    assert unreachable == sorted(unreachable)
    assert answered == sorted(answered)
    assert max(unreachable) == delivery.MAX_BACKOFF_S
    assert max(answered) == delivery.MAX_REFUSED_BACKOFF_S
    assert not delivery.refused_for_good(Refusal())
    Refusal.response = httpx.Response(422)
    assert delivery.refused_for_good(Refusal())
    Refusal.response = httpx.Response(429)
    assert not delivery.refused_for_good(Refusal())
