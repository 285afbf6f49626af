"""Incidents and the outbox of work they cause (runs to start, events, notices).

An incident row is stored, with its outbox rows, in the transaction that acknowledges the
alert, so nothing acknowledged is lost; the outbox is worked off afterwards and survives
restarts. At most one *open* incident exists per key (a partial unique index), which makes
"exactly one run per distinct incident" a database property, not an in-process one.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, Table, Text, UniqueConstraint, func, select, text
from sqlmodel import Field, SQLModel

from ktlo.store.db import MIGRATIONS, add_column, engine
from ktlo.store.models import utcnow


class IncidentStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    # A later occurrence of the same alert arrived (a later `startsAt`) while this one was
    # still open: its resolution was never sent (e.g. Alertmanager restarted without state).
    SUPERSEDED = "superseded"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    # Refused for good (a permanent 4xx from the Prefect API): never retried, shown by
    # `ktlo incidents` and `/healthz` until someone looks.
    DEAD = "dead"


class WorkKind(StrEnum):
    """What an outbox item asks the dispatcher to do."""

    START_RUN = "start_run"
    EVENT = "event"
    RESOLVED_NOTICE = "resolved_notice"


class AckOutcome(StrEnum):
    """What the receiver made of one alert."""

    OPENED = "opened"
    REPEAT = "repeat"
    RESOLVED = "resolved"
    UNKNOWN = "unknown"


class IncidentRecord(SQLModel, table=True):
    __tablename__ = "ktlo_incident"
    __table_args__ = (
        Index(
            "ux_ktlo_incident_open_key",
            "key",
            unique=True,
            sqlite_where=text("status = 'open'"),
            postgresql_where=text("status = 'open'"),
        ),
    )

    id: str = Field(primary_key=True, max_length=36)
    key: str = Field(index=True, max_length=300)
    source: str = Field(max_length=32)
    status: str = Field(default=IncidentStatus.OPEN, max_length=16)  # an IncidentStatus
    severity: str | None = Field(default=None, max_length=64)
    summary: str = Field(sa_column=Column(Text))
    labels: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    annotations: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    url: str | None = Field(default=None, sa_column=Column(Text))
    matched: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    repeats: int = 0
    first_seen: datetime = Field(default_factory=utcnow, index=True)
    # When the sender says this occurrence began (`ktlo.incidents.sources.occurrence`).
    starts_at: datetime | None = None
    last_seen: datetime = Field(default_factory=utcnow)
    resolved_at: datetime | None = None
    raw: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class OutboxItem(SQLModel, table=True):
    __tablename__ = "ktlo_outbox"
    __table_args__ = (
        UniqueConstraint("incident_id", "kind", "target", name="ux_ktlo_outbox_work"),
    )

    id: int | None = Field(default=None, primary_key=True)
    incident_id: str = Field(index=True, max_length=36)
    kind: str = Field(max_length=32)  # a WorkKind
    target: str = Field(max_length=200)  # runbook name, or event name
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    status: str = Field(default=OutboxStatus.PENDING, index=True, max_length=16)  # an OutboxStatus
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow, index=True)
    claimed_until: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    done_at: datetime | None = None
    result: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, sa_column=Column(Text))


MIGRATIONS.append((3, "ktlo_incident.starts_at", add_column("ktlo_incident", "starts_at")))


_OUTBOX: Table = OutboxItem.__table__  # type: ignore[attr-defined]


def count_outbox(status: OutboxStatus) -> int:
    with engine().connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(_OUTBOX).where(_OUTBOX.c.status == status)
        ).scalar()
    return int(count or 0)


def store_ok() -> bool:
    try:
        with engine().connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True
    except Exception:
        return False
