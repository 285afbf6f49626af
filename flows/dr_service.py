"""A DR drill's services: each one a child flow run (`dr-service`) of the drill.

A service's child run waits until the services it depends on were verified, runs its recover
runbook and its verify checks inside it (task runs, each runbook with a ktlo run record of its
own) and measures. `run_services` starts the child runs wave by wave: a wave's runs are created
together once the previous wave's runs are executing, so the runs on the critical path are
created first and the later ones while the first recover; and it hands back as soon as every
service's work ended, so the drill cleans up while Prefect records the runs' end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext

from flows.runbook import _flow_run_url, name_flow_run
from ktlo import secrets
from ktlo.engine.executor import Executor, Outcome, RunInfo
from ktlo.errors import KtloError
from ktlo.recovery import RecoveryPoint
from ktlo.runbook.loader import find_runbook, load_runbook
from ktlo.runbook.model import Runbook
from ktlo.runbook.params import validate_params
from ktlo.status import RunStatus
from ktlo.store import runs
from tasks.dr import scratch, templates
from tasks.dr.drill import ServiceResult, approval_wait_s, data_checks, rpo_of
from tasks.dr.plan import Service

SERVICE_FLOW = "dr-service"


def _since(start: datetime) -> float:
    return round((datetime.now(UTC) - start).total_seconds(), 3)


async def _run_inline(
    rb: Runbook, params: dict[str, Any], parent_run_id: str | None
) -> tuple[str, Outcome]:
    """Run a runbook's steps in the current (service) flow run: its steps are task runs of
    that run in the Prefect UI, and a ktlo run record of their own (`ktlo history`), without
    the second or so a separate flow run costs on a busy server."""
    ctx = FlowRunContext.get()
    flow_run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    url = _flow_run_url(flow_run_id) if flow_run_id else None
    run_id = str(uuid.uuid4())
    try:
        values = validate_params(rb, params)
    except KtloError as exc:
        return run_id, Outcome(status=RunStatus.FAILED, outputs={"error": str(exc)})
    runs.start_run(
        run_id, rb.name, params=values, trigger="subflow", parent_run_id=parent_run_id, url=url
    )
    info = RunInfo(
        run_id=run_id, runbook=rb.name, flow_run_id=flow_run_id, url=url, trigger="subflow"
    )
    try:
        outcome = await Executor(rb, values, info).run()
    except BaseException as exc:
        runs.finish_run(run_id, RunStatus.CRASHED, error=f"{type(exc).__name__}: {exc}")
        raise
    runs.finish_run(run_id, outcome.status, error=outcome.error)
    return run_id, outcome


def _why(outcome: Outcome) -> str:
    return outcome.error or str(outcome.outputs.get("error") or outcome.status)


@dataclass
class _Drill:
    """One running drill's services: `verified` resolves when a service's work ended (with
    "verified?"), `entered` is set once its child run executes."""

    verified: dict[str, asyncio.Future[bool]] = field(default_factory=dict)
    entered: dict[str, asyncio.Event] = field(default_factory=dict)


_drills: dict[str, _Drill] = {}  # by the drill's run id


async def run_services(
    run_id: str,
    waves: list[list[Service]],
    child: Callable[[Service], Awaitable[dict[str, Any]]],
    work_ended: Callable[[], Awaitable[None]],
) -> dict[str, dict[str, Any]]:
    """Run each service's child run (`child(svc)`), wave by wave; call `work_ended` once every
    service's work ended, before the child runs are recorded as ended. Returns each
    service's result document."""
    loop = asyncio.get_running_loop()
    drill = _drills[run_id] = _Drill()
    children: dict[str, asyncio.Future[dict[str, Any]]] = {}
    try:
        for wave in waves:
            for svc in wave:
                drill.verified[svc.name] = loop.create_future()
                drill.entered[svc.name] = asyncio.Event()
            for svc in wave:
                children[svc.name] = asyncio.ensure_future(child(svc))
            for svc in wave:
                await _until_entered(children[svc.name], drill.entered[svc.name])
        ended = asyncio.gather(*children.values())
        worked: asyncio.Future[Any] = asyncio.gather(*drill.verified.values())
        await asyncio.wait({ended, worked}, return_when=asyncio.FIRST_COMPLETED)
        await work_ended()
        outs = await ended
    except BaseException:
        for started in children.values():
            started.cancel()
        raise
    finally:
        _drills.pop(run_id, None)
    return dict(zip(children, outs, strict=True))


async def _until_entered(child: asyncio.Future[Any], entered: asyncio.Event) -> None:
    """Wait until the child run executes (or already ended: it could not start)."""
    waiter = asyncio.ensure_future(entered.wait())
    try:
        await asyncio.wait({child, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


@flow(name=SERVICE_FLOW, validate_parameters=False)
async def service_flow(
    plan: str,
    service: dict[str, Any],
    targets: dict[str, Any],
    points: list[dict[str, Any]],
    others: dict[str, dict[str, Any]],
    wave: int,
    drill_started: datetime,
    drill_run_id: str | None = None,
) -> dict[str, Any]:
    """Wait until the service's dependencies are verified, recover it into its scratch
    targets, then run its verify checks."""
    svc = Service.model_validate(service)
    naming = asyncio.create_task(name_flow_run(f"{plan}-{svc.name}"))  # beside the work
    drill = _drills.get(drill_run_id or "", _Drill())
    if svc.name in drill.entered:
        drill.entered[svc.name].set()
    gates = drill.verified
    result = ServiceResult(
        name=svc.name, wave=wave, tier=svc.tier, rto_target_s=svc.rto_s, rpo_target_s=svc.rpo_s
    )
    try:
        blocked = [d for d in svc.depends_on if d not in gates or not await gates[d]]
        if blocked:
            result.error = f"not started: dependency not verified: {', '.join(blocked)}"
        else:
            await _recover(svc, targets, points, others, drill_started, drill_run_id, result)
    finally:
        gate = gates.get(svc.name)
        if gate is not None and not gate.done():
            gate.set_result(result.verified)
        await naming
    return result.model_dump(mode="json")


async def _recover(
    svc: Service,
    targets: dict[str, Any],
    points: list[dict[str, Any]],
    others: dict[str, dict[str, Any]],
    drill_started: datetime,
    drill_run_id: str | None,
    result: ServiceResult,
) -> None:
    tgt = scratch.Targets.model_validate(targets)
    pts = [RecoveryPoint.model_validate(p) for p in points]
    result.recovery_points = pts
    result.rpo_achieved_s = rpo_of(pts, drill_started)
    result.started_s = _since(drill_started)
    ctx = FlowRunContext.get()
    result.service_run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    log = get_run_logger()
    others_t = {k: scratch.Targets.model_validate(v) for k, v in others.items()}
    context = templates.context(tgt, pts, others_t)
    recover = load_runbook(find_runbook(svc.recover.runbook))
    params = templates.recover_params(svc, context)
    result.recover_run_id, outcome = await _run_inline(recover, params, drill_run_id)
    if outcome.status == RunStatus.FAILED:
        result.error = f"recover runbook {svc.recover.runbook}: {_why(outcome)}"
        log.error("%s", result.error)
        return
    result.recovered_s = _since(drill_started)
    result.data_checks = data_checks(pts, secrets.redact(outcome.outputs))
    if svc.verify:
        rb = templates.verify_runbook(
            f"dr-verify-{svc.name}", templates.verify_checks(svc, context)
        )
        result.verify_run_id, outcome = await _run_inline(rb, {}, drill_run_id)
        if outcome.status == RunStatus.FAILED:
            result.error = f"verify: {_why(outcome)}"
            log.error("%s", result.error)
            return
    result.verified = True
    result.verified_s = result.rto_achieved_s = _since(drill_started)
    result.approval_wait_s = approval_wait_s([result.recover_run_id])
