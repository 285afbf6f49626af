"""The receiver's contract (SPEC §7): auth, limits, validation, normalisation, deduplication."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import select

from tests.conftest import Home
from tests.helpers import cli
from tests.webhook_helpers import TOKEN, Receiver, alertmanager, prom_alert, sign

TRIGGERED = """
name: on-down
triggers:
  - source: alertmanager
    match: {alertname: ServiceDown, severity: "~critical|page"}
  - source: pagerduty
    match: {source: "~db-.*"}
steps:
  - id: note
    uses: log
    with: {message: "{{ incident.summary }} ({{ incident.key }})"}
"""


@pytest.fixture
def receiver(home: Home) -> Iterator[Receiver]:
    home.runbook("on-down", TRIGGERED)
    r = Receiver()
    yield r
    r.close()


def _outbox() -> list[Any]:
    from ktlo.incidents.store import OutboxItem
    from ktlo.store.db import session

    with session() as s:
        return list(s.exec(select(OutboxItem)).all())


def _incidents() -> list[Any]:
    from ktlo.incidents.store import IncidentRecord
    from ktlo.store.db import session

    with session() as s:
        return list(s.exec(select(IncidentRecord)).all())


def _signed(receiver: Receiver, raw: bytes, signature: str) -> httpx.Response:
    return receiver.post(
        "alertmanager", None, token=None, raw=raw, headers={"x-ktlo-signature": signature}
    )


def test_auth_bearer_and_timestamped_signature(receiver: Receiver) -> None:
    body = alertmanager(prom_alert("ServiceDown", "fp1", severity="critical"))
    raw = json.dumps(body).encode()
    now = int(time.time())
    old_format = "sha256=" + hmac.new(TOKEN.encode(), raw, hashlib.sha256).hexdigest()
    other_stamp = sign(raw, t=now).split(",")[1]  # a valid v1 moved to another timestamp
    refused = [
        (None, "missing credentials"),
        ("wrong", "wrong bearer token"),
    ]
    for token, reason in refused:
        response = receiver.post("alertmanager", body, token=token)
        assert response.status_code == 401, response.text
        assert reason in response.json()["detail"]
    signatures = [
        (sign(raw, t=now - 400), "stale"),
        (sign(raw, t=now + 400), "in the future"),
        (old_format, "old format"),
        ("t=soon,v1=abc", "malformed"),
        (sign(raw).split(",")[1], "malformed"),
        (f"t={now - 5},{other_stamp}", "bad signature"),
        (sign(raw, "nope"), "bad signature"),
        (sign(raw + b" "), "bad signature"),
    ]
    for signature, reason in signatures:
        response = _signed(receiver, raw, signature)
        assert response.status_code == 401, (signature, response.text)
        assert reason in response.json()["detail"], (signature, response.text)
    assert not _incidents()
    assert _signed(receiver, raw, sign(raw)).status_code == 202
    assert _signed(receiver, raw, sign(raw, t=now - 200)).status_code == 202  # within 300 s
    assert receiver.post("alertmanager", body).status_code == 202
    assert httpx.get(f"{receiver.url}/healthz").json()["status"] == "ok"


def test_a_captured_signed_alert_replayed_after_the_window_is_refused(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ktlo.settings import reload_settings

    home.runbook("on-down", TRIGGERED)
    monkeypatch.setenv("KTLO_WEBHOOK_TOLERANCE_S", "2")
    reload_settings()
    r = Receiver()
    try:
        raw = json.dumps(
            alertmanager(prom_alert("ServiceDown", "fp-replay", severity="critical"))
        ).encode()
        captured = sign(raw)
        opened = _signed(r, raw, captured)
        assert opened.status_code == 202, opened.text
        assert opened.json()["incidents"][0]["outcome"] == "opened"
        resolved = alertmanager(
            prom_alert("ServiceDown", "fp-replay", status="resolved", severity="critical"),
            status="resolved",
        )
        assert r.post("alertmanager", resolved).json()["incidents"][0]["outcome"] == "resolved"
        time.sleep(3)
        replayed = _signed(r, raw, captured)
        assert replayed.status_code == 401, replayed.text
        assert "stale" in replayed.json()["detail"]
    finally:
        r.close()
    assert [(i.key, i.status) for i in _incidents()] == [("alertmanager:fp-replay", "resolved")]
    assert len([o for o in _outbox() if o.kind == "start_run"]) == 1


def test_no_auth_only_when_asked(home: Home) -> None:
    r = Receiver(token=None)
    try:
        assert r.post("generic", {"summary": "hello"}, token=None).status_code == 202
    finally:
        r.close()


def test_body_over_one_mib_is_413(receiver: Receiver) -> None:
    big = {"summary": "x" * (1024 * 1024 + 10)}
    assert receiver.post("generic", big).status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 100_000

    response = httpx.post(
        f"{receiver.url}/hooks/generic",
        content=chunks(),
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("source", "body", "field"),
    [
        ("alertmanager", {"version": "4"}, ["body", "alerts"]),
        (
            "alertmanager",
            {"alerts": [{"status": "burning", "labels": {}}]},
            ["body", "alerts", 0, "status"],
        ),
        ("alertmanager", {"alerts": [{"status": "firing"}]}, ["body", "alerts", 0, "labels"]),
        ("grafana", {"alerts": []}, ["body", "alerts"]),
        ("pagerduty", {"dedup_key": "x"}, ["body", "event_action"]),
        (
            "pagerduty",
            {
                "event_action": "trigger",
                "payload": {"summary": "s", "source": "h", "severity": "bad"},
            },
            ["body", "payload", "severity"],
        ),
        ("generic", {"severity": "high"}, ["body", "summary"]),
    ],
)
def test_malformed_bodies_are_422_naming_the_field(
    receiver: Receiver, source: str, body: Any, field: list[Any]
) -> None:
    response = receiver.post(source, body)
    assert response.status_code == 422, response.text
    assert field in [d["loc"] for d in response.json()["detail"]], response.json()
    assert not _incidents()


def test_invalid_json_is_422(receiver: Receiver) -> None:
    response = receiver.post("generic", None, raw=b"{not json")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_group_payload_dedup_and_resolution(receiver: Receiver) -> None:
    body = alertmanager(
        prom_alert("ServiceDown", "fp-a", severity="critical", instance="api-1"),
        prom_alert("ServiceDown", "fp-b", severity="page", instance="api-2"),
        prom_alert("DiskFull", "fp-c", severity="warning", instance="db-1"),
    )
    first = receiver.post("alertmanager", body).json()
    assert [i["outcome"] for i in first["incidents"]] == ["opened"] * 3
    assert [i["runbooks"] for i in first["incidents"]] == [["on-down"], ["on-down"], []]
    again = receiver.post("alertmanager", body).json()
    assert [i["outcome"] for i in again["incidents"]] == ["repeat"] * 3
    starts = [o for o in _outbox() if o.kind == "start_run"]
    assert len(starts) == 2
    resolved = alertmanager(
        prom_alert("ServiceDown", "fp-a", status="resolved", severity="critical"), status="resolved"
    )
    assert receiver.post("alertmanager", resolved).json()["incidents"][0]["outcome"] == "resolved"
    by_key = {i.key: i for i in _incidents()}
    assert by_key["alertmanager:fp-a"].status == "resolved"
    assert by_key["alertmanager:fp-b"].repeats == 1
    # the same alert firing again later is a new incident, with a new run
    assert (
        receiver.post("alertmanager", alertmanager(body["alerts"][0])).json()["incidents"][0][
            "outcome"
        ]
        == "opened"
    )
    assert len([o for o in _outbox() if o.kind == "start_run"]) == 3
    assert {o.kind for o in _outbox()} == {"start_run", "event", "resolved_notice"}


def test_fingerprint_falls_back_to_the_labels(receiver: Receiver) -> None:
    alert = prom_alert("ServiceDown", None, severity="critical", instance="x")
    a = receiver.post("alertmanager", alertmanager(alert)).json()["incidents"][0]
    b = receiver.post("alertmanager", alertmanager(alert)).json()["incidents"][0]
    assert a["key"] == b["key"]
    assert b["outcome"] == "repeat"


def test_pagerduty_grafana_and_generic(receiver: Receiver) -> None:
    pd = {
        "routing_key": "R0UTINGKEY",
        "event_action": "trigger",
        "dedup_key": "db-17",
        "payload": {
            "summary": "db-17 replication lag",
            "source": "db-17",
            "severity": "critical",
            "custom_details": {"lag_s": 300},
        },
    }
    opened = receiver.post("pagerduty", pd).json()["incidents"][0]
    assert opened == {
        "key": "pagerduty:db-17",
        "id": opened["id"],
        "outcome": "opened",
        "runbooks": ["on-down"],
    }
    assert (
        receiver.post("pagerduty", {**pd, "event_action": "resolve"}).json()["incidents"][0][
            "outcome"
        ]
        == "resolved"
    )
    grafana = {
        "receiver": "ktlo",
        "status": "firing",
        "title": "[FIRING:1]",
        "message": "m",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "HighLatency", "grafana_folder": "api"},
                "annotations": {"summary": "p95 over 2s"},
                "fingerprint": "g1",
                "values": {"A": 2.3},
                "dashboardURL": "http://grafana/d/1",
            }
        ],
    }
    assert receiver.post("grafana", grafana).json()["incidents"][0]["key"] == "grafana:g1"
    g1 = receiver.post("generic", {"summary": "cron job late", "dedup_key": "cron-7"}).json()[
        "incidents"
    ][0]
    assert g1["key"] == "generic:cron-7"
    h1 = receiver.post("generic", {"summary": "no key", "labels": {"a": "b"}}).json()["incidents"][
        0
    ]
    h2 = receiver.post("generic", {"summary": "no key", "labels": {"a": "b"}}).json()["incidents"][
        0
    ]
    assert h1["key"] == h2["key"]
    assert h2["outcome"] == "repeat"
    stored = {i.key: i for i in _incidents()}
    assert "R0UTINGKEY" not in json.dumps(stored["pagerduty:db-17"].raw)
    assert stored["pagerduty:db-17"].labels["lag_s"] == "300"


def test_unmatched_incidents_are_kept_and_listed(receiver: Receiver, home: Home) -> None:
    receiver.post("generic", {"summary": "nobody handles this", "dedup_key": "orphan"})
    listed = cli("incidents", "--json", env=home.env)
    assert listed.returncode == 0, listed.stderr
    incident = json.loads(listed.stdout)["incidents"][0]
    assert incident["key"] == "generic:orphan"
    assert incident["runbooks"] == []
    assert "none matched" in cli("incidents", env=home.env).stdout


def test_incident_templates_are_validated(home: Home) -> None:
    from ktlo.errors import RunbookInvalid
    from ktlo.runbook.loader import load_runbook

    path = home.runbook("bad", TRIGGERED.replace("incident.summary", "incident.sumary"))
    with pytest.raises(RunbookInvalid, match="incident has no field 'sumary'"):
        load_runbook(path)


def test_fuzzed_from_the_openapi_schema_never_5xx(receiver: Receiver) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(f"{receiver.url}/openapi.json")
    failures: list[str] = []
    statuses: list[int] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation, mode in itertools.product(operations, list(schemathesis.GenerationMode)):

        @settings(
            max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            response = case.call(
                base_url=receiver.url, headers={"authorization": f"Bearer {TOKEN}"}
            )
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.path} → {response.status_code}: {response.text[:200]}"
                )
            assert response.status_code in (200, 202, 401, 404, 405, 413, 422), response.text

        try:
            check()
        except Unsatisfiable:  # e.g. GET /healthz has no invalid inputs to generate
            assert mode == schemathesis.GenerationMode.NEGATIVE
    assert not failures, failures
    assert len(statuses) >= 100, "the fuzzer ran"
    assert {202, 422} <= set(statuses), sorted(set(statuses))


@pytest.mark.parametrize("command", ["serve", "webhook"])
def test_receiver_refuses_to_start_without_a_token(home: Home, command: str) -> None:
    env = {**home.env, "KTLO_WEBHOOK_TOKEN": ""}
    result = cli(command, "--port", "1", env=env, timeout=60)
    assert result.returncode == 1
    assert "KTLO_WEBHOOK_TOKEN is not set" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_run_starts_give_way_to_a_burst_of_alerts_but_not_to_a_single_alert(home: Home) -> None:
    import asyncio
    import time

    from ktlo.incidents import outbox

    dispatcher = outbox.Dispatcher()
    dispatcher.received()
    assert not dispatcher.bursting()  # one alert starts its run at once
    for _ in range(outbox.BURST_ALERTS):
        dispatcher.received()
    assert dispatcher.bursting()

    async def deferred() -> float:
        started = time.monotonic()
        await dispatcher._yield_to_receiver()
        return time.monotonic() - started

    waited = asyncio.run(deferred())  # the burst has paused: the wait ends after QUIET_S
    assert outbox.QUIET_S * 0.5 <= waited < outbox.MAX_DEFER_S
    assert not dispatcher.bursting()
