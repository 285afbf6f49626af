"""Failover tables: the per-cluster lock (one failover at a time, across workers) and the last
primary WAL position ktlo saw (the reference for the bytes a promotion would lose).

The lock is a row keyed by cluster: inserting it is atomic in SQLite and PostgreSQL alike, so
two runs of `pg-failover` for one failure (two alerts, two workers) cannot both act. A lease
(`expires_at`) frees a cluster whose holder died.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel, col, delete, select

from ktlo.store.db import session
from ktlo.store.models import utcnow


class FailoverLock(SQLModel, table=True):
    __tablename__ = "ktlo_failover_lock"

    cluster: str = Field(primary_key=True, max_length=128)
    holder: str = Field(max_length=256)
    acquired_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class PrimaryPosition(SQLModel, table=True):
    """The newest WAL position seen on a cluster's primary (written by status probes)."""

    __tablename__ = "ktlo_failover_position"

    cluster: str = Field(primary_key=True, max_length=128)
    primary: str = Field(max_length=128)
    lsn: int
    timeline: int | None = None
    seen_at: datetime = Field(default_factory=utcnow)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def try_lock(cluster: str, holder: str, lease_s: float) -> bool:
    now = utcnow()
    try:
        with session() as s:
            s.exec(
                delete(FailoverLock).where(
                    col(FailoverLock.cluster) == cluster, col(FailoverLock.expires_at) < now
                )
            )
            s.add(
                FailoverLock(
                    cluster=cluster, holder=holder, expires_at=now + timedelta(seconds=lease_s)
                )
            )
    except IntegrityError:
        return False
    return True


async def lock(cluster: str, holder: str, wait_s: float, lease_s: float = 300) -> bool:
    """Take the cluster's lock, waiting up to `wait_s` for another holder to finish."""
    deadline = time.monotonic() + wait_s
    while True:
        if await asyncio.to_thread(try_lock, cluster, holder, lease_s):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


def unlock(cluster: str, holder: str) -> None:
    with session() as s:
        s.exec(
            delete(FailoverLock).where(
                col(FailoverLock.cluster) == cluster, col(FailoverLock.holder) == holder
            )
        )


def lock_holder(cluster: str) -> str | None:
    with session() as s:
        row = s.get(FailoverLock, cluster)
        if row is None or _aware(row.expires_at) < utcnow():
            return None
        return row.holder


def remember_primary(cluster: str, primary: str, lsn: int, timeline: int | None) -> None:
    """Keep the newest primary position (a new timeline always replaces the old one)."""
    with session() as s:
        row = s.get(PrimaryPosition, cluster)
        if row is None:
            row = PrimaryPosition(cluster=cluster, primary=primary, lsn=lsn, timeline=timeline)
        elif (timeline or 0) > (row.timeline or 0) or lsn >= row.lsn or primary != row.primary:
            row.primary, row.lsn, row.timeline, row.seen_at = primary, lsn, timeline, utcnow()
        else:
            return
        s.add(row)


def last_primary(cluster: str) -> PrimaryPosition | None:
    with session() as s:
        return s.exec(
            select(PrimaryPosition).where(col(PrimaryPosition.cluster) == cluster)
        ).first()
