"""Tables of the ktlo store. Timestamps are UTC; JSON columns hold redacted data only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Connection, Text, text
from sqlmodel import Field, SQLModel

from ktlo.status import ApprovalStatus, RunStatus, RunTrigger
from ktlo.store.db import MIGRATIONS


def utcnow() -> datetime:
    """Aware UTC; SQLModel stores it as timestamptz and reads it back in UTC."""
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    """A stored time as JSON prints it: ISO 8601 in UTC with a `Z` (SQLite reads back naive)."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.isoformat().replace("+00:00", "Z")


class SchemaVersion(SQLModel, table=True):
    __tablename__ = "ktlo_schema"

    version: int = Field(primary_key=True)
    description: str = ""
    applied_at: datetime = Field(default_factory=utcnow)


class SchemaStamp(SQLModel, table=True):
    """Code that found all its tables and migrations in this store (`ktlo.store.db`)."""

    __tablename__ = "ktlo_schema_stamp"

    fingerprint: str = Field(primary_key=True, max_length=64)
    version: int  # the store's schema version when it was stamped
    stamped_at: datetime = Field(default_factory=utcnow)


class Run(SQLModel, table=True):
    """One execution of a runbook; `id` is the Prefect flow run id."""

    __tablename__ = "ktlo_run"

    id: str = Field(primary_key=True, max_length=64)
    runbook: str = Field(index=True, max_length=128)
    status: str = Field(default=RunStatus.RUNNING, max_length=32)  # a RunStatus
    trigger: str = Field(default=RunTrigger.MANUAL, max_length=32)  # a RunTrigger
    parent_run_id: str | None = Field(default=None, max_length=64)
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    started_at: datetime = Field(default_factory=utcnow, index=True)
    finished_at: datetime | None = None
    error: str | None = Field(default=None, sa_column=Column(Text))
    url: str | None = Field(default=None, max_length=512)


class StepRun(SQLModel, table=True):
    __tablename__ = "ktlo_step_run"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    step_id: str = Field(max_length=128)
    position: int = 0  # index of the step in the runbook
    uses: str = Field(max_length=128)
    status: str = Field(max_length=32)  # a StepStatus
    continued: bool = False  # failed, but on_failure: continue
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float | None = None
    summary: str | None = Field(default=None, sa_column=Column(Text))
    output: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    error: str | None = Field(default=None, sa_column=Column(Text))


class AuditEvent(SQLModel, table=True):
    """Append-only and hash-chained: `hash` covers this row's content and `prev_hash`."""

    __tablename__ = "ktlo_audit"

    id: int = Field(primary_key=True)
    ts: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=128)
    action: str = Field(index=True, max_length=64)
    subject: str = Field(default="", index=True, max_length=256)
    run_id: str | None = Field(default=None, index=True, max_length=64)
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditHead(SQLModel, table=True):
    """The chain's last id and hash, so deleting the newest rows is detected too.

    `mac` authenticates them with KTLO_AUDIT_KEY (None without a key): without it, whoever
    deletes the newest rows could copy the new last row's id and hash here.
    """

    __tablename__ = "ktlo_audit_head"

    id: int = Field(default=1, primary_key=True)
    last_id: int = 0
    last_hash: str = Field(default="", max_length=64)
    mac: str | None = Field(default=None, max_length=64)


def _add_audit_head_mac(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE ktlo_audit_head ADD COLUMN mac VARCHAR(64)"))
    from ktlo.store.audit import seal_head

    seal_head(conn)  # a keyed store verifies right after the upgrade, not only after an append


MIGRATIONS.append((2, "ktlo_audit_head.mac: keyed MAC of the audit head", _add_audit_head_mac))


class Approval(SQLModel, table=True):
    """A pending or decided approval step, so `ktlo approve` can check who may decide."""

    __tablename__ = "ktlo_approval"

    id: int | None = Field(default=None, primary_key=True)
    flow_run_id: str = Field(index=True, max_length=64)
    run_id: str = Field(max_length=64)
    runbook: str = Field(max_length=128)
    step_id: str = Field(max_length=128)
    message: str = Field(sa_column=Column(Text))
    approvers: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    status: str = Field(default=ApprovalStatus.PENDING, max_length=16)  # an ApprovalStatus
    requested_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    decided_by: str | None = Field(default=None, max_length=128)
    decided_at: datetime | None = None
    comment: str | None = Field(default=None, sa_column=Column(Text))
