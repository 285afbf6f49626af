"""Runs whose process died: detected, recorded in ktlo's history, and retried when asked.

Self-hosted Prefect servers do not mark the runs of dead processes as crashed by themselves
(that automation is Cloud-only), so ktlo creates it on every server it prepares: a flow run
that stops sending heartbeats is set to Crashed. The reconciler then brings ktlo's own
records in line with Prefect's states and, for runbooks with `retry_crashed: N`, starts a
new run in its place. Runs that died on this machine are known at once, without waiting
for missed heartbeats (`ktlo.orchestration.liveness`). Task runs left Running by a crashed
flow run are marked Crashed too.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from uuid import UUID

from sqlmodel import col, select

from ktlo.orchestration import liveness
from ktlo.orchestration.local_server import HEARTBEAT_S
from ktlo.status import RunStatus
from ktlo.store import audit
from ktlo.store.db import session
from ktlo.store.models import Run, utcnow

log = logging.getLogger("ktlo.orchestration.crashes")

ZOMBIE_AUTOMATION = "ktlo: mark flow runs without heartbeats as crashed"
ZOMBIE_AFTER_S = 3 * HEARTBEAT_S
FINAL_STATUS = {
    "CRASHED": RunStatus.CRASHED,
    "CANCELLED": "cancelled",
    "FAILED": RunStatus.FAILED,
    "COMPLETED": RunStatus.SUCCEEDED,
}


async def ensure_zombie_automation() -> None:
    """Create (once) the automation that marks heartbeat-less flow runs Crashed."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    try:
        await Automation.aread(name=ZOMBIE_AUTOMATION)
        return
    except ValueError:
        pass
    await Automation(
        name=ZOMBIE_AUTOMATION,
        description="Created by ktlo: a flow run whose process died stops sending heartbeats.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=ZOMBIE_AFTER_S),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {ZOMBIE_AFTER_S} s: the process running it died",
            )
        ],
    ).acreate()


def _stale_runs(min_age_s: float) -> list[Run]:
    cutoff = utcnow() - timedelta(seconds=min_age_s)
    with session() as s:
        return list(
            s.exec(
                select(Run)
                .where(Run.status == RunStatus.RUNNING)
                .where(col(Run.started_at) < cutoff)
            ).all()
        )


def has_stale_runs(min_age_s: float = 10) -> bool:
    return bool(_stale_runs(min_age_s) or liveness.dead_runs())


async def reconcile(min_age_s: float = 10) -> list[tuple[str, str]]:
    """Close ktlo records of runs that are over; tell Prefect about runs that died here.

    Retries crashed runs if their runbook asks for it.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    changed = liveness.close_dead_runs()
    dead = liveness.dead_runs()
    stale = _stale_runs(min_age_s)
    if not stale and not dead:
        return changed
    async with get_client() as client:
        for run_id in dead:
            await _tell_prefect(client, run_id)
        for run in stale:
            try:
                flow_run = await client.read_flow_run(UUID(run.id))
            except (ObjectNotFound, ValueError):
                continue
            state = flow_run.state
            if state is None or not state.is_final():
                continue
            status = FINAL_STATUS.get(state.type.value, RunStatus.CRASHED)
            message = f"flow run ended as {state.name}" + (
                f": {state.message}" if state.message else ""
            )
            await close_run(
                run, flow_run, status, None if status == RunStatus.SUCCEEDED else message
            )
            changed.append((run.id, status))
    return changed


async def _tell_prefect(client: Any, run_id: str) -> None:
    """A run that died here: Crashed in Prefect (flow run and task runs), retried if asked."""
    from prefect.exceptions import ObjectNotFound

    from ktlo.store import runs

    record = runs.get_run(run_id)
    message = (record.error if record is not None else None) or liveness.DIED
    try:
        flow_run = await client.read_flow_run(UUID(run_id))
    except (ObjectNotFound, ValueError):
        liveness.forget(run_id)
        return
    if flow_run.state is None or not flow_run.state.is_final():
        await _set_crashed(client, flow_run.id, message)
    await crash_task_runs(flow_run.id, f"its flow run crashed: {message}")
    liveness.forget(run_id)
    if record is not None and record.status == RunStatus.CRASHED:
        await _maybe_retry(record, flow_run)


async def _set_crashed(client: Any, flow_run_id: UUID, message: str) -> None:
    from prefect.states import Crashed

    await client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)


async def crash_task_runs(flow_run_id: UUID, message: str) -> int:
    """Mark the task runs a crashed flow run left unfinished Crashed (Prefect leaves them Running)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = [StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED, StateType.PAUSED]
    async with get_client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=unfinished))
            ),
        )
        for task_run in task_runs:
            await client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
    return len(task_runs)


async def close_run(run: Run, flow_run: Any, status: str, error: str | None) -> None:
    """Record how a run ended outside its own process; retry it if it crashed and may be."""
    from ktlo.store import runs

    runs.finish_run(run.id, status, error=error)
    liveness.forget(run.id)
    if status == RunStatus.CRASHED and flow_run is not None:
        await crash_task_runs(flow_run.id, f"its flow run crashed: {error or liveness.DIED}")
        await _maybe_retry(run, flow_run)


async def _maybe_retry(run: Run, flow_run: Any) -> None:
    from ktlo.errors import KtloError
    from ktlo.orchestration.launch import astart_runbook
    from ktlo.runbook.loader import find_runbook, load_runbook

    try:
        rb = load_runbook(find_runbook(run.runbook))
    except KtloError:
        return
    attempt = _crash_attempt(run)
    if attempt >= rb.retry_crashed or flow_run.deployment_id is None or _retried(run):
        return
    try:
        new_id = await astart_runbook(
            rb.name,
            params=dict(flow_run.parameters or {}),
            idempotency_key=f"retry-crashed:{run.id}",
            tags=[f"ktlo-retry-of:{run.id}"],
        )
    except KtloError as exc:
        log.warning("could not retry crashed run %s: %s", run.id, exc)
        return
    with session() as s:
        audit.record(
            "run.retried",
            run.runbook,
            run_id=run.id,
            details={"new_flow_run_id": new_id, "attempt": attempt + 1, "of": rb.retry_crashed},
            s=s,
        )


def _retried(run: Run) -> bool:
    """Already retried: the serving process's hook and the reconciler may both see the crash."""
    from ktlo.store.models import AuditEvent

    with session() as s:
        return (
            s.exec(
                select(AuditEvent)
                .where(AuditEvent.action == "run.retried")
                .where(AuditEvent.run_id == run.id)
            ).first()
            is not None
        )


def _crash_attempt(run: Run) -> int:
    """How many crash retries precede this run (its chain of `run.retried` audit events)."""
    count = 0
    current = run.id
    with session() as s:
        while True:
            from ktlo.store.models import AuditEvent

            event = s.exec(
                select(AuditEvent)
                .where(AuditEvent.action == "run.retried")
                .where(col(AuditEvent.details)["new_flow_run_id"].as_string() == current)
            ).first()
            if event is None or event.run_id is None:
                return count
            count += 1
            current = event.run_id
