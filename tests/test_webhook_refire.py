"""A re-fired alert is a new occurrence (SPEC §7): a later `startsAt` for an open incident's
fingerprint closes the stale incident as superseded and opens a new one, which starts its
runbooks. Real payloads through a real receiver on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import select

from tests.conftest import Home
from tests.helpers import cli
from tests.webhook_helpers import Receiver, alertmanager, prom_alert

TRIGGERED = """
name: on-down
triggers:
  - source: any
    match: {alertname: ServiceDown}
steps:
  - id: note
    uses: log
    with: {message: "{{ incident.summary }}"}
"""


@pytest.fixture
def receiver(home: Home) -> Iterator[Receiver]:
    home.runbook("on-down", TRIGGERED)
    r = Receiver()
    yield r
    r.close()


def _rows() -> tuple[list[Any], list[Any]]:
    from ktlo.incidents.store import IncidentRecord, OutboxItem
    from ktlo.store.db import session

    with session() as s:
        incidents = list(s.exec(select(IncidentRecord)).all())
        outbox = list(s.exec(select(OutboxItem)).all())
    return incidents, outbox


def _firing(starts_at: str, status: str = "firing") -> dict[str, Any]:
    alert = prom_alert("ServiceDown", "fp-refire", status=status, instance="api-1")
    alert["startsAt"] = starts_at
    return alertmanager(alert, status=status)


def _outcome(receiver: Receiver, source: str, body: dict[str, Any]) -> str:
    response = receiver.post(source, body)
    assert response.status_code == 202, response.text
    return str(response.json()["incidents"][0]["outcome"])


def test_a_later_starts_at_supersedes_the_open_incident(receiver: Receiver, home: Home) -> None:
    assert _outcome(receiver, "alertmanager", _firing("2026-11-25T10:00:00Z")) == "opened"
    # Alertmanager's repeat notification of the same firing: same startsAt
    assert _outcome(receiver, "alertmanager", _firing("2026-11-25T10:00:00.000Z")) == "repeat"
    # Alertmanager restarted without state: the resolution never came, the alert fires again
    assert _outcome(receiver, "alertmanager", _firing("2026-11-25T12:30:00Z")) == "opened"
    incidents, outbox = _rows()
    by_status = {i.status: i for i in incidents}
    assert sorted(by_status) == ["open", "superseded"]
    old, new = by_status["superseded"], by_status["open"]
    assert old.resolved_at is not None
    assert old.repeats == 1
    starts = {o.incident_id for o in outbox if o.kind == "start_run"}
    assert starts == {old.id, new.id}  # the new occurrence starts its runbook
    events = {(o.incident_id, o.target) for o in outbox if o.kind == "event"}
    assert (old.id, "ktlo.incident.superseded") in events
    # a late resolution of the old occurrence does not close the new one
    late = _firing("2026-11-25T10:00:00Z", status="resolved")
    assert _outcome(receiver, "alertmanager", late) == "unknown"
    assert {i.id: i.status for i in _rows()[0]}[new.id] == "open"
    # the operator sees both, and why the first was closed
    listed = json.loads(cli("incidents", "--json", env=home.env).stdout)["incidents"]
    assert sorted(i["status"] for i in listed) == ["open", "superseded"]
    shown = cli("incidents", "show", "alertmanager:fp-refire", env=home.env).stdout
    assert "superseded" in shown
    audit = cli("audit", "show", env=home.env).stdout
    assert "incident.superseded" in audit
    assert "incident.resolved_stale" in audit


def test_grafana_and_generic_occurrences(receiver: Receiver) -> None:
    grafana = _firing("2026-11-25T10:00:00Z")
    grafana.pop("version")
    assert _outcome(receiver, "grafana", grafana) == "opened"
    grafana["alerts"][0]["startsAt"] = "2026-11-25T11:00:00+01:00"  # the same instant
    assert _outcome(receiver, "grafana", grafana) == "repeat"
    grafana["alerts"][0]["startsAt"] = "2026-11-25T10:05:00Z"
    assert _outcome(receiver, "grafana", grafana) == "opened"

    generic = {"summary": "ServiceDown on api-9", "labels": {"alertname": "ServiceDown"}}
    assert _outcome(receiver, "generic", {**generic, "starts_at": "2026-11-25T10:00:00Z"}) == (
        "opened"
    )
    assert _outcome(receiver, "generic", generic) == "repeat"  # no stamp: a repeat
    assert _outcome(receiver, "generic", {**generic, "starts_at": "2026-11-25T11:00:00Z"}) == (
        "opened"
    )
    # PagerDuty's timestamp is per event, not per occurrence: a new trigger is a repeat
    pd: dict[str, Any] = {
        "event_action": "trigger",
        "dedup_key": "pd-1",
        "payload": {
            "summary": "ServiceDown",
            "source": "db-1",
            "severity": "critical",
            "custom_details": {"alertname": "ServiceDown"},
        },
    }
    pd["payload"]["timestamp"] = "2026-11-25T10:00:00Z"
    assert _outcome(receiver, "pagerduty", pd) == "opened"
    pd["payload"]["timestamp"] = "2026-11-25T10:09:00Z"
    assert _outcome(receiver, "pagerduty", pd) == "repeat"
    incidents, outbox = _rows()
    statuses = sorted(i.status for i in incidents)
    assert statuses == ["open", "open", "open", "superseded", "superseded"]
    assert len([o for o in outbox if o.kind == "start_run"]) == 5


def test_a_store_from_before_occurrences_is_upgraded(home: Home) -> None:
    from ktlo.store.db import engine, reset_engines

    with engine().begin() as conn:  # the schema as it was before incidents had a starts_at
        conn.exec_driver_sql("ALTER TABLE ktlo_incident DROP COLUMN starts_at")
        conn.exec_driver_sql("DELETE FROM ktlo_schema")
        conn.exec_driver_sql(
            "INSERT INTO ktlo_schema (version, description, applied_at) "
            "VALUES (2, 'initial schema', CURRENT_TIMESTAMP)"
        )
    reset_engines()
    home.runbook("on-down", TRIGGERED)
    receiver = Receiver()
    try:
        assert _outcome(receiver, "alertmanager", _firing("2026-11-25T10:00:00Z")) == "opened"
        assert _outcome(receiver, "alertmanager", _firing("2026-11-25T11:00:00Z")) == "opened"
    finally:
        receiver.close()
    with engine().connect() as conn:
        versions = {row[0] for row in conn.exec_driver_sql("SELECT version FROM ktlo_schema")}
    assert 3 in versions
