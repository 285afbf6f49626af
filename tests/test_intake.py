"""Group commit in the intake: a batch of requests stores exactly what they would one by one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlmodel import col, select

from ktlo.incidents import intake
from ktlo.incidents.index import RunbookIndex
from ktlo.incidents.sources import GenericPayload, Incident, normalise
from ktlo.runbook.model import Runbook
from ktlo.store import audit
from tests.conftest import Home

RUNBOOK = Runbook.model_validate(
    {
        "name": "on-ops",
        "triggers": [{"source": "generic", "match": {"team": "ops"}}],
        "steps": [{"id": "note", "uses": "log", "with": {"message": "{{ incident.summary }}"}}],
    }
)


def alert(key: str, status: str = "firing", team: str = "ops") -> list[Incident]:
    body = {"summary": f"{key} {status}", "dedup_key": key, "status": status}
    return normalise("generic", GenericPayload.model_validate({**body, "labels": {"team": team}}))


def _rows() -> tuple[list[Any], list[Any]]:
    from ktlo.incidents.store import IncidentRecord, OutboxItem
    from ktlo.store.db import session

    with session() as s:
        incidents = list(s.exec(select(IncidentRecord).order_by(col(IncidentRecord.first_seen))))
        outbox = list(s.exec(select(OutboxItem).order_by(col(OutboxItem.id))))
    return incidents, outbox


def test_one_batch_opens_repeats_resolves_and_reopens_in_order(home: Home) -> None:
    requests = [
        (alert("a"), [RUNBOOK]),
        (alert("a"), [RUNBOOK]),  # repeat of an incident opened earlier in the same batch
        (alert("b", team="dev"), [RUNBOOK]),  # matches no runbook: kept, nothing started
        (alert("a", "resolved"), [RUNBOOK]),
        (alert("a"), [RUNBOOK]),  # a new incident for the same key after it was resolved
        (alert("zz", "resolved"), [RUNBOOK]),  # never seen
        (alert("b"), [RUNBOOK]),
    ]
    acks = intake.store(requests)
    outcomes = [(a.key, a.outcome, a.runbooks) for [a] in acks]
    assert outcomes == [
        ("generic:a", "opened", ["on-ops"]),
        ("generic:a", "repeat", ["on-ops"]),
        ("generic:b", "opened", []),
        ("generic:a", "resolved", ["on-ops"]),
        ("generic:a", "opened", ["on-ops"]),
        ("generic:zz", "unknown", []),
        ("generic:b", "repeat", []),
    ]
    incidents, outbox = _rows()
    first_a, b, second_a = incidents
    assert (first_a.key, first_a.status, first_a.repeats) == ("generic:a", "resolved", 1)
    assert first_a.resolved_at is not None
    assert (b.status, b.repeats, b.matched) == ("open", 1, [])
    assert (second_a.key, second_a.status, second_a.repeats) == ("generic:a", "open", 0)
    work = [(o.incident_id, o.kind, o.target) for o in outbox]
    assert work.count((first_a.id, "start_run", "on-ops")) == 1
    assert work.count((second_a.id, "start_run", "on-ops")) == 1
    assert (first_a.id, "resolved_notice", "on-ops") in work
    assert (first_a.id, "event", "ktlo.incident.resolved") in work
    assert not [w for w in work if w[0] == b.id and w[1] == "start_run"]
    started = next(o for o in outbox if o.incident_id == second_a.id and o.kind == "start_run")
    assert started.payload["id"] == second_a.id
    assert started.payload["summary"] == "a firing"
    actions = [e.action for e in audit.events()]
    assert actions.count("incident.opened") == 3
    assert actions.count("incident.resolved") == 1
    assert actions.count("incident.resolved_unknown") == 1
    assert audit.verify().ok


def test_concurrent_receives_share_transactions_and_each_gets_its_own_acks(home: Home) -> None:
    writer = intake.Intake()

    async def burst() -> list[list[intake.Ack]]:
        keys = [f"k{i % 40}" for i in range(200)]  # 40 incidents, each sent 5 times
        return await asyncio.gather(*(writer.receive(alert(k), [RUNBOOK]) for k in keys))

    try:
        results = asyncio.run(burst())
    finally:
        writer.close()
    by_key: dict[str, list[str]] = {}
    for [ack] in results:
        by_key.setdefault(ack.key, []).append(ack.outcome)
    assert len(by_key) == 40
    assert all(
        sorted(o) == ["opened", "repeat", "repeat", "repeat", "repeat"] for o in by_key.values()
    )
    incidents, outbox = _rows()
    assert len(incidents) == 40
    assert sum(i.repeats for i in incidents) == 160
    assert sum(1 for o in outbox if o.kind == "start_run") == 40
    assert audit.verify().ok


def test_a_batch_that_meets_another_receivers_incident_falls_back_to_one_by_one(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    intake.store([(alert("raced"), [RUNBOOK])])  # "the other receiver" opened it
    real = intake._open_incidents
    reads: list[set[str]] = []

    def stale_read(conn: Any, keys: set[str]) -> Any:
        """The first read of the raced key happened before the other receiver's commit."""
        stale = "generic:raced" in keys and not any("generic:raced" in r for r in reads)
        reads.append(set(keys))
        return {} if stale else real(conn, keys)

    monkeypatch.setattr(intake, "_open_incidents", stale_read)
    writer = intake.Intake()

    async def both() -> list[list[intake.Ack]]:
        return await asyncio.gather(
            writer.receive(alert("fresh"), [RUNBOOK]), writer.receive(alert("raced"), [RUNBOOK])
        )

    try:
        fresh, raced = asyncio.run(both())
    finally:
        writer.close()
    assert fresh[0].outcome == "opened"
    assert raced[0].outcome == "repeat"
    assert sum("generic:raced" in r for r in reads) == 2  # the stale batch, then one by one
    incidents, outbox = _rows()
    assert sorted(i.key for i in incidents) == ["generic:fresh", "generic:raced"]
    assert sum(1 for o in outbox if o.kind == "start_run") == 2
    assert audit.verify().ok


def test_the_runbook_index_sees_changes_within_its_recheck_interval(home: Home) -> None:
    import time

    trigger = """
        name: {name}
        triggers: [{{source: generic, match: {{team: ops}}}}]
        steps: [{{id: note, uses: log, with: {{message: hi}}}}]
        """
    home.runbook("first", trigger.format(name="first"))
    index = RunbookIndex(home.runbooks, recheck_s=0.3)
    assert [rb.name for rb in index.runbooks()] == ["first"]
    home.runbook("second", trigger.format(name="second"))
    # within the interval the directory is not listed again (that was the cost per alert)
    assert [rb.name for rb in index.runbooks()] == ["first"]
    time.sleep(0.35)
    assert sorted(rb.name for rb in index.runbooks()) == ["first", "second"]
