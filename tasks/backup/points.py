"""The backup catalog as a recovery-point provider (`ktlo.recovery`, data kind `backup`).

DR asks for the newest verified backup of many sources at once; one query answers the
whole batch (the newest complete row per source), so readiness of a thousand services
costs one round trip.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func
from sqlmodel import col, select

from ktlo.recovery import RecoveryPoint, register
from ktlo.store.db import session
from tasks.backup.store import COMPLETE, Backup, aware

KIND = "backup"


def point_of(entry: Backup) -> RecoveryPoint:
    counts = entry.details.get("row_counts") if isinstance(entry.details, dict) else None
    return RecoveryPoint(
        provider=KIND,
        source=entry.source,
        id=entry.id,
        time=aware(entry.created_at) or entry.created_at,
        kind=entry.kind,
        size=entry.size,
        verified=entry.verify_status == "ok",
        verified_at=aware(entry.verified_at),
        checksums={"sha256": entry.sha256} if entry.sha256 else {},
        row_counts=dict(counts) if isinstance(counts, dict) else {},
    )


def latest_points(sources: list[str], verified: bool) -> dict[str, RecoveryPoint]:
    """The newest complete (and, when asked, verified) backup of each source."""
    wanted: list[Any] = [col(Backup.source).in_(sources), Backup.status == COMPLETE]
    if verified:
        wanted.append(Backup.verify_status == "ok")
    newest = (
        select(Backup.source, func.max(Backup.created_at).label("at"))
        .where(*wanted)
        .group_by(col(Backup.source))
        .subquery()
    )
    query = (
        select(Backup)
        .join(
            newest,
            and_(col(Backup.source) == newest.c.source, col(Backup.created_at) == newest.c.at),
        )
        .where(*wanted)
    )
    with session() as s:
        rows = list(s.exec(query).all())
    return {row.source: point_of(row) for row in rows}


register(KIND, latest_points)
