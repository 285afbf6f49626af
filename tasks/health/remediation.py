"""Remediation: start a check's `remediate` runbook once per failing episode, follow its outcome.

The flow run is created from the runbook's deployment with an idempotency key made of the
check's key and the moment it went FAILING, so a retried or concurrent sweep cannot start a
second run for the same episode. A runbook without a deployment is reported, not raised.
Later sweeps read the run's state from Prefect until it is final.
"""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import UUID

from ktlo import secrets
from ktlo.store.models import utcnow
from tasks.health.results import Remediation

log = logging.getLogger("ktlo.health")
FINAL = frozenset({"completed", "failed", "crashed", "cancelled", "not_deployed", "not_started"})


def idempotency_key(check_key: str, episode: datetime) -> str:
    return f"ktlo-remediate/{check_key}/{episode.isoformat()}"


async def start(runbook: str, check_key: str, episode: datetime) -> Remediation:
    from ktlo.orchestration.launch import NotDeployed, astart_runbook

    try:
        flow_run_id = await astart_runbook(
            runbook,
            idempotency_key=idempotency_key(check_key, episode),
            tags=["ktlo-remediation"],
        )
    except NotDeployed as exc:
        return Remediation(runbook=runbook, status="not_deployed", error=str(exc))
    except Exception as exc:  # the API is down, parameters rejected, ...
        detail = secrets.redact(f"{type(exc).__name__}: {exc}".splitlines()[0])
        return Remediation(runbook=runbook, status="not_started", error=detail)
    return Remediation(
        runbook=runbook, status="started", flow_run_id=flow_run_id, started_at=utcnow()
    )


async def refresh(pending: list[Remediation]) -> None:
    """Update the status of unfinished remediation runs in place (one API call)."""
    ids = [r.flow_run_id for r in pending if r.flow_run_id and r.status not in FINAL]
    if not ids:
        return
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    try:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in ids]))
            )
    except Exception as exc:  # an outcome we cannot read now is read on the next sweep
        log.warning("could not read remediation runs: %s", exc)
        return
    states = {str(run.id): run.state.type.value.lower() for run in runs if run.state}
    for r in pending:
        if r.flow_run_id in states:
            r.status = states[r.flow_run_id]
