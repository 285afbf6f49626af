"""The audit trail: append-only, each row chained to the previous one by its hash.

`hash = H(prev_hash ‖ canonical JSON of the row)`, with H = HMAC-SHA256 keyed by
`KTLO_AUDIT_KEY` when set (so the chain cannot be recomputed without the key), SHA-256
otherwise. A head row records the last id and hash, so deleting the newest rows is detected
as well as editing or deleting any other. Appends are serialised by a database lock
(`BEGIN IMMEDIATE` on SQLite, an advisory transaction lock on PostgreSQL), never a file or
in-process lock, so several workers can append to one store.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table, insert, select, text, update
from sqlmodel import Session, col
from sqlmodel import select as orm_select

from ktlo import secrets
from ktlo.settings import get_settings
from ktlo.store.db import engine, session
from ktlo.store.models import AuditEvent, AuditHead, utcnow

GENESIS = "0" * 64
_EVENTS: Table = AuditEvent.__table__  # type: ignore[attr-defined]
_HEAD: Table = AuditHead.__table__  # type: ignore[attr-defined]
_ADVISORY_KEY = 7352002


@lru_cache(maxsize=1)
def default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _ts(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _digest(prev_hash: str, row: dict[str, Any]) -> str:
    payload = json.dumps(row, sort_keys=True, separators=(",", ":"), default=str).encode()
    key = get_settings().audit_key
    if key is not None:
        return hmac.new(
            key.get_secret_value().encode(), prev_hash.encode() + payload, hashlib.sha256
        ).hexdigest()
    return hashlib.sha256(prev_hash.encode() + payload).hexdigest()


def _content(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "ts": _ts(event.ts),
        "actor": event.actor,
        "action": event.action,
        "subject": event.subject,
        "run_id": event.run_id,
        "details": event.details,
    }


def _connection(target: Session | Connection) -> Connection:
    return target.connection() if isinstance(target, Session) else target


@dataclass(frozen=True)
class Entry:
    """One event to append (see `record_many`)."""

    action: str
    subject: str = ""
    details: dict[str, Any] | None = None
    run_id: str | None = None
    actor: str | None = None


def record(
    action: str,
    subject: str = "",
    *,
    details: dict[str, Any] | None = None,
    run_id: str | None = None,
    actor: str | None = None,
    s: Session | Connection | None = None,
) -> AuditEvent:
    """Append one event, inside the caller's transaction when given one (`s`).

    Details are redacted and must be JSON-serialisable.
    """
    entry = Entry(action, subject, details, run_id, actor)
    if s is not None:
        return record_many([entry], _connection(s))[0]
    with engine().begin() as conn:
        return record_many([entry], conn)[0]


def record_many(entries: list[Entry], conn: Connection) -> list[AuditEvent]:
    """Append events in order inside the caller's transaction: one head read and update.

    Core statements, not the ORM: this runs for every step and every incident.
    """
    if not entries:
        return []
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
    head = conn.execute(select(_HEAD.c.last_id, _HEAD.c.last_hash).where(_HEAD.c.id == 1)).first()
    last_id, last_hash = (head[0], head[1]) if head else (0, GENESIS)
    events: list[AuditEvent] = []
    for entry in entries:
        event = AuditEvent(
            id=last_id + 1,
            ts=utcnow(),
            actor=entry.actor or default_actor(),
            action=entry.action,
            subject=secrets.redact(entry.subject),
            run_id=entry.run_id,
            details=json.loads(json.dumps(secrets.redact(entry.details or {}), default=str)),
            prev_hash=last_hash,
            hash="",
        )
        event.hash = _digest(event.prev_hash, _content(event))
        last_id, last_hash = event.id, event.hash
        events.append(event)
    conn.execute(
        insert(_EVENTS), [{c.name: getattr(e, c.name) for c in _EVENTS.columns} for e in events]
    )
    if head:
        conn.execute(
            update(_HEAD).where(_HEAD.c.id == 1).values(last_id=last_id, last_hash=last_hash)
        )
    else:
        conn.execute(insert(_HEAD).values(id=1, last_id=last_id, last_hash=last_hash))
    return events


@dataclass(frozen=True)
class Verdict:
    ok: bool
    rows: int
    message: str
    bad_row: int | None = None


def verify() -> Verdict:
    """Walk the whole chain; the first inconsistency names its row."""
    with session() as s:
        head = s.get(AuditHead, 1)
        expected_prev = GENESIS
        expected_id = 1
        count = 0
        for event in _iter_rows(s):
            if event.id != expected_id:
                missing = expected_id if event.id > expected_id else event.id
                return Verdict(False, count, f"audit row {missing} is missing (deleted?)", missing)
            if event.prev_hash != expected_prev:
                return Verdict(
                    False,
                    count,
                    f"audit row {event.id}: chain broken (prev_hash does not match row {event.id - 1})",
                    event.id,
                )
            if not hmac.compare_digest(event.hash, _digest(event.prev_hash, _content(event))):
                return Verdict(
                    False, count, f"audit row {event.id} was modified (hash mismatch)", event.id
                )
            expected_prev = event.hash
            expected_id += 1
            count += 1
        last_id = head.last_id if head else 0
        last_hash = head.last_hash if head else GENESIS
        if last_id != count or (count and last_hash != expected_prev):
            if last_id > count:
                return Verdict(
                    False,
                    count,
                    f"audit rows {count + 1}..{last_id} are missing (deleted?)",
                    count + 1,
                )
            return Verdict(False, count, "audit head does not match the last row (edited?)", count)
        return Verdict(True, count, f"audit trail intact: {count} rows")


def _iter_rows(s: Session, batch: int = 2000) -> Iterator[AuditEvent]:
    last = 0
    while True:
        rows = s.exec(
            orm_select(AuditEvent)
            .where(col(AuditEvent.id) > last)
            .order_by(col(AuditEvent.id))
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id


def events(
    *, run_id: str | None = None, action_prefix: str | None = None, limit: int = 200
) -> list[AuditEvent]:
    with session() as s:
        query = orm_select(AuditEvent)
        if run_id:
            query = query.where(AuditEvent.run_id == run_id)
        if action_prefix:
            query = query.where(col(AuditEvent.action).startswith(action_prefix))
        return list(s.exec(query.order_by(col(AuditEvent.id).desc()).limit(limit)).all())
