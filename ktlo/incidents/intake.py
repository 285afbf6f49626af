"""Durable intake: incidents and the work they cause are stored before the alert is acknowledged.

`store()` keeps a batch of requests in one transaction: new incidents are opened (with one
`start_run` outbox row per matching runbook and an `opened` event), repeats of an open
incident are counted, resolutions close the incident (with a `resolved` event and a notice
to the runbooks' channels). `Intake` is the receiver's single writer: requests that arrive
together are stored together (group commit), so a burst costs one transaction per batch, not
per alert. The dispatcher (`ktlo.incidents.outbox`) does the rest afterwards.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Table, insert, select, update
from sqlalchemy.exc import IntegrityError

from ktlo import secrets
from ktlo.incidents.sources import matching_runbooks, occurrence
from ktlo.incidents.store import (
    AckOutcome,
    IncidentRecord,
    IncidentStatus,
    OutboxItem,
    OutboxStatus,
    WorkKind,
)
from ktlo.runbook.incident import Incident
from ktlo.runbook.model import Runbook
from ktlo.store import audit
from ktlo.store.db import checkpoint_in_background, engine
from ktlo.store.models import utcnow

_INCIDENTS: Table = IncidentRecord.__table__  # type: ignore[attr-defined]
_OUTBOX: Table = OutboxItem.__table__  # type: ignore[attr-defined]
_INSERT_INCIDENT = insert(_INCIDENTS)
MAX_BATCH = 64


@dataclass
class Ack:
    key: str
    id: str | None
    outcome: AckOutcome
    runbooks: list[str] = field(default_factory=list)


def incident_params(incident_id: str, incident: Incident) -> dict[str, Any]:
    """The `incident` a triggered run receives (and its templates see)."""
    data = incident.model_dump(mode="json")
    data["id"] = incident_id
    return secrets.redact(data)


@dataclass
class _Open:
    """An open incident as this batch knows it."""

    id: str
    matched: list[str]
    starts_at: datetime | None = None
    repeats: int = 0

    def older_than(self, incident: Incident) -> bool:
        """The alert is a later occurrence than this incident (both say when they began)."""
        stamp = occurrence(incident)
        return self.starts_at is not None and stamp is not None and stamp > self.starts_at

    def newer_than(self, incident: Incident) -> bool:
        """The alert belongs to an earlier occurrence than this incident."""
        stamp = occurrence(incident)
        return self.starts_at is not None and stamp is not None and stamp < self.starts_at


@dataclass
class _Batch:
    """The statements one batch needs, gathered first, executed together."""

    conn: Connection
    open: dict[str, _Open]
    outbox: list[dict[str, Any]] = field(default_factory=list)
    events: list[audit.Entry] = field(default_factory=list)
    opened: list[dict[str, Any]] = field(default_factory=list)

    def insert_opened(self) -> None:
        """New incidents go in as one executemany (a statement per row was two thirds of the
        cost of a 5,000-alert group), before any update that may touch them. The partial
        unique index refuses a second open incident for a key here (another receiver was
        first), and the batch falls back to one request at a time."""
        if self.opened:
            self.conn.execute(_INSERT_INCIDENT, self.opened)
            self.opened = []

    def work(self, incident_id: str, kind: str, target: str, payload: dict[str, Any]) -> None:
        now = utcnow()
        self.outbox.append(
            {
                "incident_id": incident_id,
                "kind": kind,
                "target": target,
                "payload": payload,
                "status": OutboxStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )

    def open_incident(
        self, incident: Incident, runbooks: list[Runbook], supersedes: str | None = None
    ) -> Ack:
        matched = [rb.name for rb in matching_runbooks(runbooks, incident)]
        now = utcnow()
        record_id = str(uuid.uuid4())
        starts_at = occurrence(incident)
        self.opened.append(
            {
                "id": record_id,
                "key": incident.key,
                "source": incident.source,
                "status": IncidentStatus.OPEN,
                "severity": incident.severity,
                "summary": incident.summary,
                "labels": incident.labels,
                "annotations": incident.annotations,
                "url": incident.url,
                "matched": matched,
                "repeats": 0,
                "first_seen": now,
                "starts_at": starts_at,
                "last_seen": now,
                "resolved_at": None,
                "raw": secrets.redact(incident.raw),
            }
        )
        self.open[incident.key] = _Open(record_id, matched, starts_at)
        params = incident_params(record_id, incident)
        for name in matched:
            self.work(record_id, WorkKind.START_RUN, name, params)
        self.work(record_id, WorkKind.EVENT, "ktlo.incident.opened", params)
        details: dict[str, Any] = {
            "incident_id": record_id,
            "summary": incident.summary,
            "runbooks": matched,
        }
        if incident.truncated_alerts:
            details["truncated_alerts"] = incident.truncated_alerts
        if supersedes:
            details["supersedes"] = supersedes
        self.events.append(
            audit.Entry("incident.opened", incident.key, details, actor=_actor(incident))
        )
        return Ack(incident.key, record_id, AckOutcome.OPENED, matched)

    def close(
        self, known: _Open, incident: Incident, status: IncidentStatus, **details: Any
    ) -> dict[str, Any]:
        """Close an open incident: its row, its `ktlo.incident.<status>` event and audit
        entry; returns the incident as its runs and notices see it."""
        self.insert_opened()
        self.flush_repeats(known)
        now = utcnow()
        self.conn.execute(
            update(_INCIDENTS)
            .where(_INCIDENTS.c.id == known.id)
            .values(status=status, resolved_at=now, last_seen=now)
        )
        del self.open[incident.key]
        params = incident_params(known.id, incident)
        self.work(known.id, WorkKind.EVENT, f"ktlo.incident.{status}", params)
        entry = {"incident_id": known.id, "summary": incident.summary, **details}
        self.events.append(
            audit.Entry(f"incident.{status}", incident.key, entry, actor=_actor(incident))
        )
        return params

    def resolve(self, known: _Open, incident: Incident) -> Ack:
        params = self.close(known, incident, IncidentStatus.RESOLVED)
        for name in known.matched:
            self.work(known.id, WorkKind.RESOLVED_NOTICE, name, params)
        return Ack(incident.key, known.id, AckOutcome.RESOLVED, list(known.matched))

    def supersede(self, known: _Open, incident: Incident) -> None:
        """Close an open incident that a later occurrence of its alert replaces: the
        resolution of the old one never came, and the new one must start its runbooks."""
        stamp = occurrence(incident)
        by = stamp.isoformat() if stamp else None
        self.close(known, incident, IncidentStatus.SUPERSEDED, by_starts_at=by)

    def flush_repeats(self, known: _Open) -> None:
        if known.repeats:
            self.insert_opened()
            self.conn.execute(
                update(_INCIDENTS)
                .where(_INCIDENTS.c.id == known.id)
                .values(repeats=_INCIDENTS.c.repeats + known.repeats, last_seen=utcnow())
            )
            known.repeats = 0

    def one(self, incident: Incident, runbooks: list[Runbook]) -> Ack:
        known = self.open.get(incident.key)
        if incident.status == "resolved":
            if known is None:
                unknown = audit.Entry(
                    "incident.resolved_unknown", incident.key, actor=_actor(incident)
                )
                self.events.append(unknown)
                return Ack(incident.key, None, AckOutcome.UNKNOWN)
            if known.newer_than(incident):  # a late resolution of an earlier occurrence
                details = {"incident_id": known.id, "note": "resolution of an earlier occurrence"}
                stale = audit.Entry(
                    "incident.resolved_stale", incident.key, details, actor=_actor(incident)
                )
                self.events.append(stale)
                return Ack(incident.key, known.id, AckOutcome.UNKNOWN, list(known.matched))
            return self.resolve(known, incident)
        if known is not None and known.older_than(incident):
            self.supersede(known, incident)
            return self.open_incident(incident, runbooks, supersedes=known.id)
        if known is not None:
            known.repeats += 1
            return Ack(incident.key, known.id, AckOutcome.REPEAT, list(known.matched))
        return self.open_incident(incident, runbooks)

    def finish(self) -> None:
        self.insert_opened()
        for known in self.open.values():
            self.flush_repeats(known)
        if self.outbox:
            self.conn.execute(insert(_OUTBOX), self.outbox)
        audit.record_many(self.events, self.conn)


def _actor(incident: Incident) -> str:
    return f"webhook:{incident.source}"


def _open_incidents(conn: Connection, keys: set[str]) -> dict[str, _Open]:
    t = _INCIDENTS
    query = select(t.c.key, t.c.id, t.c.matched, t.c.starts_at).where(
        t.c.status == IncidentStatus.OPEN, t.c.key.in_(sorted(keys))
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return {
        key: _Open(id_, list(matched or []), _utc(starts_at))
        for key, id_, matched, starts_at in conn.execute(query)
    }


def _utc(stamp: datetime | None) -> datetime | None:
    """A stored time as aware UTC (SQLite reads it back naive)."""
    if stamp is None or stamp.tzinfo is not None:
        return stamp
    return stamp.replace(tzinfo=UTC)


Request = tuple[Sequence[Incident], list[Runbook]]


def store(requests: Sequence[Request]) -> list[list[Ack]]:
    """Store every request's incidents, in order, in one transaction; the acks per request.

    Raises `IntegrityError` when another receiver opened one of the incidents first.
    """
    keys = {incident.key for incidents, _ in requests for incident in incidents}
    with engine().begin() as conn:
        batch = _Batch(conn, _open_incidents(conn, keys))
        acks = [
            [batch.one(incident, runbooks) for incident in incidents]
            for incidents, runbooks in requests
        ]
        batch.finish()
    return acks


def receive(incidents: Sequence[Incident], runbooks: list[Runbook], attempts: int = 3) -> list[Ack]:
    """Store one request's incidents and their outbox work atomically; returns what happened."""
    for attempt in range(attempts):
        try:
            return store([(incidents, runbooks)])[0]
        except IntegrityError:
            # Another receiver opened the same incident first: this one is a repeat.
            if attempt == attempts - 1:
                raise
    return []


class Intake:
    """The receiver's writer thread: concurrent requests are stored in one transaction.

    `await intake.receive(...)` returns once the request's incidents are committed. When a
    batch meets an incident another receiver opened meanwhile, its requests are stored one
    by one (each then sees the other's incident and counts a repeat).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Request, Future[list[Ack]]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    async def receive(self, incidents: Sequence[Incident], runbooks: list[Runbook]) -> list[Ack]:
        done: Future[list[Ack]] = Future()
        self._start()
        self._queue.put(((incidents, runbooks), done))
        return await asyncio.wrap_future(done)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                checkpoint_in_background(engine())  # no commit of an ack pays for a checkpoint
                self._thread = threading.Thread(target=self._run, name="ktlo-intake", daemon=True)
                self._thread.start()

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(item)
            self._store(batch)

    @staticmethod
    def _store(batch: list[tuple[Request, Future[list[Ack]]]]) -> None:
        try:
            results = store([request for request, _ in batch])
        except IntegrityError:
            for (incidents, runbooks), done in batch:
                _settle(done, lambda i=incidents, r=runbooks: receive(i, r))
            return
        except Exception as exc:
            for _, done in batch:
                done.set_exception(exc)
            return
        for (_, done), acks in zip(batch, results, strict=True):
            done.set_result(acks)


def _settle(done: Future[list[Ack]], work: Any) -> None:
    try:
        done.set_result(work())
    except Exception as exc:
        done.set_exception(exc)
