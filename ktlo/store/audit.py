"""The audit trail: append-only, each row chained to the previous one by its hash.

`hash = H(prev_hash ‖ canonical JSON of the row)`, with H = HMAC-SHA256 keyed by
`KTLO_AUDIT_KEY` when set (so the chain cannot be recomputed without the key), SHA-256
otherwise. A head row records the last id and hash and, with a key, a MAC over both, so
the newest rows cannot be deleted by re-pointing the head. Each append also writes the head
to an anchor file outside the store (`ktlo.store.audit_anchor`), and `verify` cross-checks runs
and steps against their audit rows (`ktlo.store.audit_crosscheck`), so even an emptied trail is
noticed. Appends are serialised by a database lock (`BEGIN IMMEDIATE` on SQLite, an
advisory transaction lock on PostgreSQL), never a file or in-process lock, so several
workers can append to one store.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table, insert, select, text, update
from sqlmodel import Session, col
from sqlmodel import select as orm_select

from ktlo import secrets
from ktlo.settings import get_settings
from ktlo.store import audit_anchor
from ktlo.store.audit_crosscheck import runs_without_audit
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


def _key() -> str | None:
    key = get_settings().audit_key
    return key.get_secret_value() if key is not None else None


def _digest(prev_hash: str, row: dict[str, Any], key: str | None) -> str:
    payload = json.dumps(row, sort_keys=True, separators=(",", ":"), default=str).encode()
    if key is not None:
        return hmac.new(key.encode(), prev_hash.encode() + payload, hashlib.sha256).hexdigest()
    return hashlib.sha256(prev_hash.encode() + payload).hexdigest()


def head_mac(key: str, last_id: int, last_hash: str) -> str:
    """The head's MAC: only a holder of the key can point the head at another row."""
    message = f"ktlo-audit-head\0{last_id}\0{last_hash}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def seal_head(conn: Connection) -> None:
    """Give an unsealed head its MAC (the schema upgrade that added the column does this)."""
    key = _key()
    head = conn.execute(select(_HEAD.c.last_id, _HEAD.c.last_hash).where(_HEAD.c.id == 1)).first()
    if key is not None and head is not None:
        mac = head_mac(key, head[0], head[1])
        conn.execute(update(_HEAD).where(_HEAD.c.id == 1).values(mac=mac))


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
    key = _key()
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
        event.hash = _digest(event.prev_hash, _content(event), key)
        last_id, last_hash = event.id, event.hash
        events.append(event)
    conn.execute(
        insert(_EVENTS), [{c.name: getattr(e, c.name) for c in _EVENTS.columns} for e in events]
    )
    values = {"last_id": last_id, "last_hash": last_hash}
    values["mac"] = head_mac(key, last_id, last_hash) if key is not None else None
    if head:
        conn.execute(update(_HEAD).where(_HEAD.c.id == 1).values(**values))
    else:
        conn.execute(insert(_HEAD).values(id=1, **values))
    audit_anchor.stage(conn, last_id, last_hash, key)
    return events


@dataclass(frozen=True)
class Verdict:
    ok: bool
    rows: int
    message: str
    bad_row: int | None = None


@dataclass(frozen=True)
class _Walked:
    rows: int
    last_hash: str
    key_index: int  # which key the last row was written with (see `verify`)


def verify(previous_keys: Sequence[str] = ()) -> Verdict:
    """Walk the chain, then check the head, the anchor and the runs; name the first problem.

    `previous_keys` (oldest first) verify rows written before KTLO_AUDIT_KEY was rotated.
    Along the chain a row's key is the previous row's or a newer one (plain SHA-256 counts
    as the oldest), so a leaked old key cannot rewrite rows sealed by a newer one.
    """
    current = _key()
    keys: list[str | None] = [None, *previous_keys] + ([current] if current else [])
    eng = engine()
    anchor = audit_anchor.read(audit_anchor.store_tag(eng.url), [k for k in keys if k])
    with session() as s:
        walked = _walk(s, keys, anchor)
        if isinstance(walked, Verdict):
            return walked  # a named row first: an anchor problem may only follow from it
        count = walked.rows
        if anchor.problem:
            return Verdict(False, count, anchor.problem)
        problem = _head_problem(s.get(AuditHead, 1), walked, keys, anchor, current)
        if problem is not None:
            return Verdict(False, count, problem[0], problem[1])
        missing = runs_without_audit(s.connection())
        if missing is not None:
            return Verdict(False, count, missing)
    if current is None:
        sealed = "head not authenticated (KTLO_AUDIT_KEY is not set)"
    else:
        sealed = "head MAC valid"
    scope = "" if eng.dialect.name == "sqlite" else ", this machine's appends only"
    if anchor.lines:
        anchored = f"{anchor.lines} anchored heads checked ({anchor.path}{scope})"
    else:
        anchored = f"no heads anchored at {anchor.path}{scope}"
    return Verdict(True, count, f"audit trail intact: {count} rows; {sealed}; {anchored}")


def _walk(s: Session, keys: list[str | None], anchor: audit_anchor.Anchor) -> Verdict | _Walked:
    expected_prev = GENESIS
    expected_id = 1
    count = 0
    k = 0
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
        row = _content(event)
        found = next(
            (
                j
                for j in range(k, len(keys))
                if hmac.compare_digest(event.hash, _digest(event.prev_hash, row, keys[j]))
            ),
            None,
        )
        if found is None:
            return Verdict(False, count, _mismatch(event, row, keys[:k]), event.id)
        k = found
        anchored = anchor.heads.get(event.id)
        if anchored is not None and not event.hash.startswith(anchored.hash):
            return Verdict(
                False,
                count,
                f"audit row {event.id} differs from the head anchored at {anchor.path} line "
                f"{anchored.line} (rewritten, or the store restored from an older backup)",
                event.id,
            )
        expected_prev = event.hash
        expected_id += 1
        count += 1
    return _Walked(count, expected_prev, k)


def _mismatch(event: AuditEvent, row: dict[str, Any], older: list[str | None]) -> str:
    for key in older:
        if hmac.compare_digest(event.hash, _digest(event.prev_hash, row, key)):
            kind = "without KTLO_AUDIT_KEY" if key is None else "with an older key"
            return f"audit row {event.id} was written {kind} after rows with a newer key"
    return (
        f"audit row {event.id} was modified (hash mismatch; "
        "or written with a key this verify was not given)"
    )


def _rows(first: int, last: int) -> str:
    return f"audit row {first} is" if first == last else f"audit rows {first}..{last} are"


def _head_problem(
    head: AuditHead | None,
    walked: _Walked,
    keys: list[str | None],
    anchor: audit_anchor.Anchor,
    current: str | None,
) -> tuple[str, int] | None:
    """The head must point at the last row, not end before the anchor, and carry its MAC."""
    count = walked.rows
    last_id = head.last_id if head else 0
    if last_id > count:
        return f"{_rows(count + 1, last_id)} missing (deleted?)", count + 1
    latest = anchor.latest
    if latest is not None and latest.id > count:
        return (
            f"{_rows(count + 1, latest.id)} missing: {anchor.path} line "
            f"{latest.line} anchored row {latest.id} (deleted, and the head re-pointed?)",
            count + 1,
        )
    if last_id != count or (count and head is not None and head.last_hash != walked.last_hash):
        return "audit head does not match the last row (edited?)", count
    if current is None or head is None:
        return None
    if not head.mac:
        return (
            f"audit head (row {last_id}) has no MAC although KTLO_AUDIT_KEY is set "
            "(forged, or written by a process without the key)",
            last_id,
        )
    macs = (head_mac(k, head.last_id, head.last_hash) for k in keys[walked.key_index :] if k)
    if not any(hmac.compare_digest(head.mac, mac) for mac in macs):
        return (
            f"audit head (row {last_id}) has a bad MAC "
            "(forged, or KTLO_AUDIT_KEY differs from the writers' key)",
            last_id,
        )
    return None


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
