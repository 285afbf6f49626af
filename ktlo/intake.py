"""Durable intake: incidents and the work they cause are stored before the alert is acknowledged.

`receive()` runs in one transaction per request: new incidents are opened (with one
`start_run` outbox row per matching runbook and an `opened` event), repeats of an open
incident are counted, resolutions close the incident (with a `resolved` event and a notice
to the runbooks' channels). The dispatcher (`ktlo.dispatch`) does the rest afterwards.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from ktlo import audit, secrets
from ktlo.incidents import Incident, matching_runbooks
from ktlo.runbook import Runbook
from ktlo.settings import get_settings
from ktlo.store.db import session
from ktlo.store.incidents import IncidentRecord, OutboxItem
from ktlo.store.models import utcnow


@dataclass
class Ack:
    key: str
    id: str | None
    outcome: str  # opened | repeat | resolved | unknown
    runbooks: list[str] = field(default_factory=list)


class RunbookIndex:
    """Runbooks with triggers, reloaded when a file in the runbooks directory changes."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory
        self._stamp: tuple[tuple[str, float], ...] | None = None
        self._runbooks: list[Runbook] = []

    def _fingerprint(self) -> tuple[tuple[str, float], ...]:
        from ktlo.loader import runbook_files

        files = runbook_files(self.directory or get_settings().runbooks_dir)
        return tuple((str(p), p.stat().st_mtime) for p in files)

    def runbooks(self) -> list[Runbook]:
        from ktlo.loader import load_all

        stamp = self._fingerprint()
        if stamp != self._stamp:
            runbooks, _problems = load_all(self.directory)
            self._runbooks = [rb for rb in runbooks if rb.triggers]
            self._stamp = stamp
        return self._runbooks

    def get(self, name: str) -> Runbook | None:
        return next((rb for rb in self.runbooks() if rb.name == name), None)


def incident_params(record: IncidentRecord, incident: Incident) -> dict[str, Any]:
    """The `incident` a triggered run receives (and its templates see)."""
    data = incident.model_dump(mode="json")
    data["id"] = record.id
    return secrets.redact(data)


def _open(s: Session, incident: Incident, runbooks: list[Runbook]) -> Ack:
    matched = [rb.name for rb in matching_runbooks(runbooks, incident)]
    record = IncidentRecord(
        id=str(uuid.uuid4()),
        key=incident.key,
        source=incident.source,
        status="open",
        severity=incident.severity,
        summary=incident.summary,
        labels=incident.labels,
        annotations=incident.annotations,
        url=incident.url,
        matched=matched,
        raw=secrets.redact(incident.raw),
    )
    s.add(record)
    s.flush()  # the partial unique index refuses a second open incident for this key here
    params = incident_params(record, incident)
    for name in matched:
        s.add(OutboxItem(incident_id=record.id, kind="start_run", target=name, payload=params))
    s.add(
        OutboxItem(
            incident_id=record.id, kind="event", target="ktlo.incident.opened", payload=params
        )
    )
    audit.record(
        "incident.opened",
        incident.key,
        details={"incident_id": record.id, "summary": incident.summary, "runbooks": matched},
        actor=f"webhook:{incident.source}",
        s=s,
    )
    return Ack(incident.key, record.id, "opened", matched)


def _resolve(s: Session, record: IncidentRecord, incident: Incident) -> Ack:
    record.status = "resolved"
    record.resolved_at = utcnow()
    record.last_seen = record.resolved_at
    s.add(record)
    params = incident_params(record, incident)
    s.add(
        OutboxItem(
            incident_id=record.id, kind="event", target="ktlo.incident.resolved", payload=params
        )
    )
    for name in record.matched:
        s.add(
            OutboxItem(incident_id=record.id, kind="resolved_notice", target=name, payload=params)
        )
    audit.record(
        "incident.resolved",
        incident.key,
        details={"incident_id": record.id, "summary": incident.summary},
        actor=f"webhook:{incident.source}",
        s=s,
    )
    return Ack(incident.key, record.id, "resolved", list(record.matched))


def _one(s: Session, incident: Incident, runbooks: list[Runbook]) -> Ack:
    query = (
        select(IncidentRecord)
        .where(IncidentRecord.key == incident.key)
        .where(IncidentRecord.status == "open")
    )
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    record = s.exec(query).first()
    if incident.status == "resolved":
        if record is None:
            audit.record(
                "incident.resolved_unknown", incident.key, actor=f"webhook:{incident.source}", s=s
            )
            return Ack(incident.key, None, "unknown")
        return _resolve(s, record, incident)
    if record is not None:
        record.repeats += 1
        record.last_seen = utcnow()
        s.add(record)
        return Ack(incident.key, record.id, "repeat", list(record.matched))
    return _open(s, incident, runbooks)


def receive(incidents: list[Incident], runbooks: list[Runbook], attempts: int = 3) -> list[Ack]:
    """Store a request's incidents and their outbox work atomically; returns what happened."""
    for attempt in range(attempts):
        try:
            with session() as s:
                return [_one(s, incident, runbooks) for incident in incidents]
        except IntegrityError:
            # Another request opened the same incident first: this one is a repeat.
            if attempt == attempts - 1:
                raise
    return []
