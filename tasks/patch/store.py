"""Patch state: scans (history, with the plan hash), first-seen versions, per-host state, locks.

The host lock row is how "one rollout per host at a time" holds across workers: taking it is
an INSERT of the primary key, so two runs on the same database cannot both win.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel, col, select

from ktlo.store.db import MIGRATIONS, add_column, engine, session
from ktlo.store.models import utcnow


class PatchScan(SQLModel, table=True):
    """One scan of one host: what was installed, what was pending, and the plan's hash."""

    __tablename__ = "ktlo_patch_scan"

    id: int | None = Field(default=None, primary_key=True)
    host: str = Field(index=True, max_length=128)
    scanned_at: datetime = Field(default_factory=utcnow, index=True)
    run_id: str | None = Field(default=None, max_length=64)
    installed: dict[str, dict[str, str]] = Field(default_factory=dict, sa_column=Column(JSON))
    pending: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    plan_hash: str = Field(default="", max_length=32)
    fingerprint: str | None = Field(default=None, sa_column=Column(Text))  # ProviderScan's
    reboot_required: bool = False
    reboot_packages: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    needrestart: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    applicable: bool = True
    error: str | None = Field(default=None, sa_column=Column(Text))


MIGRATIONS.append((4, "ktlo_patch_scan.fingerprint", add_column("ktlo_patch_scan", "fingerprint")))


class PatchSeen(SQLModel, table=True):
    """When ktlo first saw a version offered on any host (what `min_age_days` counts from)."""

    __tablename__ = "ktlo_patch_seen"

    provider: str = Field(primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=200)
    version: str = Field(primary_key=True, max_length=128)
    first_seen: datetime = Field(default_factory=utcnow)


class PatchHostState(SQLModel, table=True):
    """A host's compliance state and its last rollout outcome (what `ktlo patch status` shows)."""

    __tablename__ = "ktlo_patch_host"

    host: str = Field(primary_key=True, max_length=128)
    state: str = Field(max_length=32)
    scan_id: int | None = None
    scanned_at: datetime | None = None
    outcome: str | None = Field(default=None, max_length=32)
    outcome_run_id: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_column=Column(Text))
    drift: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    updated_at: datetime = Field(default_factory=utcnow)


class PatchLock(SQLModel, table=True):
    """One rollout per host at a time: the row exists while a run works on the host."""

    __tablename__ = "ktlo_patch_lock"

    host: str = Field(primary_key=True, max_length=128)
    run_id: str = Field(max_length=64)
    acquired_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def record_scans(scans: list[dict[str, Any]]) -> list[tuple[int, datetime]]:
    """Store scans (PatchScan fields) and the first-seen time of every new version, in ONE
    transaction; returns each scan's (id, scanned_at).

    Core inserts, not one ORM object and transaction per host: for 200 hosts that cost
    seconds. The versions already seen are read with one query.
    """
    if not scans:
        return []
    now = utcnow()
    keys = {(i["provider"], i["name"], i["version"]) for scan in scans for i in scan["pending"]}
    with session() as s:
        added = s.execute(
            insert(PatchScan).returning(col(PatchScan.id), sort_by_parameter_order=True),
            [{**scan, "scanned_at": now} for scan in scans],
        )
        ids = [int(i) for i in added.scalars()]
        if keys:
            names = sorted({k[1] for k in keys})
            query = select(PatchSeen.provider, PatchSeen.name, PatchSeen.version)
            known = {tuple(r) for r in s.exec(query.where(col(PatchSeen.name).in_(names)))}
            new = sorted(keys - known)
            if new:
                s.execute(
                    insert(PatchSeen),
                    [
                        {"provider": p, "name": n, "version": v, "first_seen": now}
                        for p, n, v in new
                    ],
                )
    return [(i, now) for i in ids]


def first_seen() -> dict[tuple[str, str, str], datetime]:
    with session() as s:
        return {
            (r.provider, r.name, r.version): _aware(r.first_seen) for r in s.exec(select(PatchSeen))
        }


def last_scans(hosts: list[str] | None = None, before: int | None = None) -> dict[str, PatchScan]:
    """Each host's newest scan (older than scan id `before` when given).

    Only those rows are read: the history grows by a row per host and scan, and decoding all
    of it (JSON package lists) took a rollout of 20 hosts 70 ms after a few dozen runs.
    """
    newest = select(col(PatchScan.host), func.max(PatchScan.id).label("id")).group_by(
        col(PatchScan.host)
    )
    if hosts is not None:
        newest = newest.where(col(PatchScan.host).in_(hosts))
    if before is not None:
        newest = newest.where(col(PatchScan.id) < before)
    ids = newest.subquery()
    with session() as s:
        query = select(PatchScan).join(ids, col(PatchScan.id) == ids.c.id)
        return {scan.host: scan for scan in s.exec(query)}


def save_state(host: str, **fields: Any) -> None:
    save_states({host: fields})


def save_states(changes: dict[str, dict[str, Any]], conn: Connection | None = None) -> None:
    """Update hosts' state rows (created when missing) in one transaction, the caller's when
    given. Core statements, one executemany per set of columns: this runs for every host a
    rollout finishes (the ORM's per-row update cost a rollout of 20 hosts 0.2 s of CPU)."""
    if not changes:
        return
    if conn is None:
        with engine().begin() as own:
            save_states(changes, own)
        return
    table: Table = PatchHostState.__table__  # type: ignore[attr-defined]
    now = utcnow()
    known = set(conn.execute(select(table.c.host).where(table.c.host.in_(list(changes)))).scalars())
    new = [
        {"state": "", "drift": [], **fields, "host": host, "updated_at": now}
        for host, fields in changes.items()
        if host not in known
    ]
    for _, rows in _by_columns(new):
        conn.execute(insert(table), rows)
    # bound as b_<column>: SQLAlchemy keeps the columns' own names for itself
    old = [
        {f"b_{k}": v for k, v in {**fields, "host": host, "updated_at": now}.items()}
        for host, fields in changes.items()
        if host in known
    ]
    for keys, rows in _by_columns(old):
        values: dict[str, Any] = {k[2:]: bindparam(k) for k in keys if k != "b_host"}
        statement = update(table).where(table.c.host == bindparam("b_host")).values(values)
        conn.execute(statement, rows)


def _by_columns(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, ...], list[dict[str, Any]]]]:
    """Rows grouped by their set of keys: one executemany per group."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row)), []).append(row)
    return list(groups.items())


def states() -> list[PatchHostState]:
    with session() as s:
        return list(s.exec(select(PatchHostState).order_by(col(PatchHostState.host))))


def acquire(hosts: list[str], run_id: str, ttl_s: float) -> dict[str, str]:
    """Take each host's lock (expired ones are cleared first); returns host -> the run that
    holds it, for the hosts this run did not get."""
    now = utcnow()
    held: dict[str, str] = {}
    with session() as s:
        s.exec(delete(PatchLock).where(col(PatchLock.expires_at) < now))
        for row in s.exec(select(PatchLock).where(col(PatchLock.host).in_(hosts))):
            held[row.host] = row.run_id
    free = [h for h in hosts if h not in held]
    expires = now + timedelta(seconds=ttl_s)
    try:  # the usual case: every lock in one transaction
        with session() as s:
            s.add_all(PatchLock(host=h, run_id=run_id, expires_at=expires) for h in free)
        return held
    except IntegrityError:  # one was taken between the read and the insert: host by host
        pass
    for host in free:
        try:
            with session() as s:
                s.add(PatchLock(host=host, run_id=run_id, expires_at=expires))
        except IntegrityError:  # taken between the read and the insert
            held[host] = "another run"
    return held


def release(hosts: list[str], run_id: str) -> None:
    with session() as s:
        s.exec(
            delete(PatchLock).where(col(PatchLock.host).in_(hosts), col(PatchLock.run_id) == run_id)
        )
