"""The incidents section: open and recent incidents, the runbooks they started and how
those runs ended, each linked to its Prefect UI run."""

from __future__ import annotations

from sqlmodel import col, or_, select

from ktlo.app.dashboard.model import Incident, Run, utc
from ktlo.incidents.store import IncidentRecord, IncidentStatus, OutboxItem, WorkKind
from ktlo.store.db import session
from ktlo.store.models import Run as RunRow

RECENT = 20


def gather() -> list[Incident]:
    """Open incidents first, then the most recent resolved ones."""
    with session() as s:
        records = list(
            s.exec(
                select(IncidentRecord)
                .where(
                    or_(
                        IncidentRecord.status == IncidentStatus.OPEN,
                        col(IncidentRecord.id).in_(
                            select(IncidentRecord.id)
                            .order_by(col(IncidentRecord.first_seen).desc())
                            .limit(RECENT)
                        ),
                    )
                )
                .order_by(col(IncidentRecord.first_seen).desc())
            ).all()
        )
        ids = [r.id for r in records]
        work = list(
            s.exec(
                select(OutboxItem).where(
                    col(OutboxItem.incident_id).in_(ids), OutboxItem.kind == WorkKind.START_RUN
                )
            ).all()
        )
        run_ids = [w.result for w in work if w.result]
        runs = {r.id: r for r in s.exec(select(RunRow).where(col(RunRow.id).in_(run_ids))).all()}
    started: dict[str, list[Run]] = {}
    for w in work:
        run = runs.get(w.result or "")
        status = run.status if run else ("not started yet" if w.status == "pending" else w.status)
        started.setdefault(w.incident_id, []).append(
            Run(runbook=w.target, flow_run_id=w.result, status=status, url=run.url if run else None)
        )
    out = [
        Incident(
            key=r.key,
            status=r.status,
            severity=r.severity,
            summary=r.summary,
            source=r.source,
            first_seen=utc(r.first_seen) or r.first_seen,
            resolved_at=utc(r.resolved_at),
            runs=started.get(r.id, []),
        )
        for r in records
    ]
    out.sort(key=lambda i: (i.status != IncidentStatus.OPEN, -i.first_seen.timestamp()))
    return out
