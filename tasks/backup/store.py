"""The backup catalog: one row per backup attempt, from `writing` to `complete` (or `failed`).

A row is inserted before any byte is written and marked `complete` only after the object has
been renamed into place (local) or its upload completed (S3) and its manifest written; so a
backup that dies half-way never looks complete. `owner` (host:pid:start-ticks) and
`heartbeat_at` let the next run tell a dead writer from a live one and clean up after it.
Verification results live on the row, because retention and freshness depend on them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel, col, select

from ktlo.store.db import session
from ktlo.store.models import utcnow

WRITING, COMPLETE, FAILED, PRUNING, PRUNED = "writing", "complete", "failed", "pruning", "pruned"


class Backup(SQLModel, table=True):
    __tablename__ = "ktlo_backup"

    id: str = Field(primary_key=True, max_length=64)
    source: str = Field(index=True, max_length=512)
    kind: str = Field(max_length=32)  # directory|sqlite|postgres|postgres_globals|mariadb
    status: str = Field(default=WRITING, index=True, max_length=16)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    completed_at: datetime | None = None
    destination: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    location: str = Field(default="", max_length=1024)  # URL of the object
    key: str = Field(default="", max_length=1024)  # object name inside the destination
    size: int | None = None
    sha256: str | None = Field(default=None, max_length=64)
    input_bytes: int | None = None  # bytes read from the source (before compression)
    compression: str = Field(default="none", max_length=32)
    encryption: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    tool_versions: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    owner: str = Field(default="", max_length=256)
    heartbeat_at: datetime | None = None
    upload_id: str | None = Field(default=None, max_length=1024)  # S3 multipart upload
    run_id: str | None = Field(default=None, index=True, max_length=64)
    step_id: str | None = Field(default=None, max_length=128)
    error: str | None = Field(default=None, sa_column=Column(Text))
    verify_status: str | None = Field(default=None, max_length=16)  # ok|failed
    verified_at: datetime | None = None
    verify_deep: bool = False
    verify_error: str | None = Field(default=None, sa_column=Column(Text))
    pruned_at: datetime | None = None


def aware(ts: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything in the catalog is UTC."""
    if ts is None:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def add(entry: Backup) -> Backup:
    with session() as s:
        s.add(entry)
    return entry


def get(backup_id: str) -> Backup | None:
    with session() as s:
        return s.get(Backup, backup_id)


def update(backup_id: str, **changes: Any) -> Backup | None:
    with session() as s:
        entry = s.get(Backup, backup_id)
        if entry is None:
            return None
        for name, value in changes.items():
            setattr(entry, name, value)
        s.add(entry)
        return entry


def by_prefix(prefix: str, limit: int = 2) -> list[Backup]:
    with session() as s:
        query = select(Backup).where(col(Backup.id).startswith(prefix)).limit(limit)
        return list(s.exec(query).all())


def entries(
    *,
    source: str | None = None,
    statuses: tuple[str, ...] | None = (COMPLETE,),
    limit: int | None = None,
) -> list[Backup]:
    """Newest first."""
    with session() as s:
        query = select(Backup)
        if source is not None:
            query = query.where(Backup.source == source)
        if statuses is not None:
            query = query.where(col(Backup.status).in_(statuses))
        query = query.order_by(col(Backup.created_at).desc(), col(Backup.id).desc())
        if limit is not None:
            query = query.limit(limit)
        return list(s.exec(query).all())


def latest(source: str, *, verified: bool = False) -> Backup | None:
    for entry in entries(source=source):
        if not verified or entry.verify_status == "ok":
            return entry
    return None


# The catalog offers its backups as recovery points (DR asks `ktlo.recovery`, not this domain).
from tasks.backup import points as _points  # noqa: E402,F401
