"""The audit chain's heads, anchored outside the store in an append-only file.

Whoever can write the store can delete the newest audit rows and the head together; the
anchor keeps what the head was on this machine, so `ktlo audit verify` sees the chain end
too early. Each committed append writes one short line, `<store> <last id> <hash> <mac>`,
with one `O_APPEND` write (no fsync: a line lost in a crash only anchors less). The line is
written once the transaction has committed (when its connection goes back to the pool or
begins again): a line for a transaction that rolled back would be a false alarm. Appenders
of several processes share the file; their lines may be out of order, so readers use ids,
not line order. `<store>` names the database, so one file may serve several stores; with a
store shared by several machines, each machine's file holds its own appends.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL
from sqlalchemy.pool import Pool

from ktlo.settings import get_settings

log = logging.getLogger("ktlo.store.audit")
HEX = 32  # an anchor line keeps 128 bits of the row hash and of its MAC
_STAGED = "ktlo_audit_anchor_staged"  # conn.info: the head this transaction appended
_COMMITTED = "ktlo_audit_anchor_committed"  # conn.info: committed, not yet written
_tags: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()
_warned: set[Path] = set()


def path() -> Path:
    settings = get_settings()
    return _resolved(settings.audit_anchor, settings.home_dir)


@lru_cache(maxsize=8)
def _resolved(configured: Path | None, home: Path) -> Path:
    return configured.expanduser().resolve() if configured is not None else home / "audit.anchor"


def store_tag(url: URL) -> str:
    """A short name of the database (never its password) that lines of its appends carry."""
    if url.get_backend_name() == "sqlite":
        name = f"sqlite:{Path(url.database or '').expanduser().resolve()}"
    else:
        backend = url.get_backend_name()
        port = url.port or (5432 if backend == "postgresql" else "")
        name = f"{backend}://{(url.host or '').lower()}:{port}/{url.database or ''}"
    return hashlib.sha256(name.encode()).hexdigest()[:12]


def line_mac(key: str, row_id: int, hash_prefix: str) -> str:
    message = f"ktlo-audit-anchor\0{row_id}\0{hash_prefix}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:HEX]


def stage(conn: Connection, last_id: int, last_hash: str, key: str | None) -> None:
    """Remember the head this transaction appended; it is written after the commit."""
    tag = _tags.get(conn.engine)
    if tag is None:
        tag = _tags.setdefault(conn.engine, store_tag(conn.engine.url))
    prefix = last_hash[:HEX]
    mac = line_mac(key, last_id, prefix) if key else "-"
    conn.info[_STAGED] = (path(), f"{tag} {last_id} {prefix} {mac}\n".encode())


# SQLAlchemy's "commit" event comes before the database's COMMIT: the line waits for the
# connection's next use or its return to the pool, and an error in between drops it. The
# listeners are class-wide, registered at import: adding one to an engine while another
# thread dispatches its events breaks that dispatch. On other connections they find nothing.
def _info(conn: Connection) -> dict[Any, Any] | None:
    """The connection's info, unless it is closed or invalidated (reading it would reconnect)."""
    if conn is None or conn.closed or conn.invalidated:
        return None  # an invalidated connection's line is dropped at checkin
    return conn.info


def _on_commit(conn: Connection) -> None:
    info = _info(conn)
    if info is not None and _STAGED in info:
        info[_COMMITTED] = info.pop(_STAGED)


def _on_rollback(conn: Connection) -> None:
    info = _info(conn)
    if info is not None:
        info.pop(_STAGED, None)


def _on_rollback_savepoint(conn: Connection, _name: Any, _context: Any) -> None:
    _on_rollback(conn)


def _on_error(context: Any) -> None:
    info = _info(context.connection)
    if info is not None:
        info.pop(_STAGED, None)
        info.pop(_COMMITTED, None)


def _on_begin(conn: Connection) -> None:
    info = _info(conn)
    committed = info.pop(_COMMITTED, None) if info is not None else None
    if committed is not None:
        _append(*committed)


def _on_checkin(dbapi_conn: Any, record: Any) -> None:
    if record is None:
        return
    record.info.pop(_STAGED, None)  # never committed
    committed = record.info.pop(_COMMITTED, None)
    if committed is not None and dbapi_conn is not None:  # None: invalidated, commit unsure
        _append(*committed)


event.listen(Engine, "commit", _on_commit)
event.listen(Engine, "rollback", _on_rollback)
event.listen(Engine, "rollback_savepoint", _on_rollback_savepoint)
event.listen(Engine, "handle_error", _on_error)
event.listen(Engine, "begin", _on_begin)
event.listen(Pool, "checkin", _on_checkin)


def _append(target: Path, line: bytes) -> None:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        try:
            fd = os.open(target, flags, 0o644)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, flags, 0o644)
        try:
            os.write(fd, line)  # one write: appenders of other processes never split it
        finally:
            os.close(fd)
    except OSError as exc:
        if target not in _warned:  # the rows are committed; say once that anchoring stopped
            _warned.add(target)
            log.warning("cannot append to the audit anchor %s: %s", target, exc.strerror)


@dataclass(frozen=True)
class Head:
    """One anchored head: row `id` had a hash starting with `hash`."""

    line: int
    id: int
    hash: str


@dataclass
class Anchor:
    """This store's heads in the anchor file, or the first problem with the file."""

    path: Path
    heads: dict[int, Head] = field(default_factory=dict)
    latest: Head | None = None
    lines: int = 0
    authenticated: int = 0
    problem: str | None = None


def read(tag: str, keys: Sequence[str]) -> Anchor:
    """Parse the anchor; lines with a MAC must verify under one of `keys` when given any."""
    anchor = Anchor(path())
    try:
        data = anchor.path.read_bytes()
    except FileNotFoundError:
        return anchor
    except OSError as exc:
        anchor.problem = f"cannot read the audit anchor {anchor.path}: {exc.strerror}"
        return anchor
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip(b"\0 \r\t"):
            continue  # blank, or zeros a crash left at the end
        parts = raw.decode("ascii", "replace").split()
        if len(parts) != 4 or not parts[1].isdigit() or len(parts[2]) != HEX:
            anchor.problem = f"audit anchor {anchor.path} line {number} is malformed (edited?)"
            return anchor
        if parts[0] != tag:
            continue  # another store's append
        head = Head(number, int(parts[1]), parts[2])
        mac = parts[3]
        if keys and mac != "-":
            if not any(hmac.compare_digest(mac, line_mac(k, head.id, head.hash)) for k in keys):
                anchor.problem = (
                    f"audit anchor {anchor.path} line {number} has a bad MAC "
                    "(forged line, or written with a key verify was not given)"
                )
                return anchor
            anchor.authenticated += 1
        seen = anchor.heads.get(head.id)
        if seen is not None and seen.hash != head.hash:
            anchor.problem = (
                f"audit anchor {anchor.path} lines {seen.line} and {number} record different "
                f"hashes for audit row {head.id} (store restored from a backup, or rewritten)"
            )
            return anchor
        anchor.heads[head.id] = head
        anchor.lines += 1
        if anchor.latest is None or head.id > anchor.latest.id:
            anchor.latest = head
    return anchor
