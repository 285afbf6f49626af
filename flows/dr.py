"""The DR drill flow: recover a plan's services into scratch targets in dependency order,
verify, measure, and always clean up.

Each service is a child flow run (`dr-service`); its recover runbook and verify checks run
inside it as task runs (each with a ktlo run record), all visible in the Prefect UI. All child
runs start at once and each waits until its dependencies were verified, so independent
services recover concurrently and Prefect's cost of starting a run overlaps the recovery of
the services before it; a service whose dependency was not verified is not started. Cleanup
runs in `finally` (errors and Ctrl-C), in the flow's cancellation/crash hooks (a served run
that is cancelled or killed), and otherwise in the next readiness pass (the scratch journal
names the dead owner).
"""

from __future__ import annotations

import asyncio
import getpass
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import MarkdownArtifact
from prefect.context import FlowRunContext

from flows.runbook import _flow_run_url
from ktlo import secrets
from ktlo.engine.executor import Executor, Outcome, RunInfo
from ktlo.errors import KtloError
from ktlo.recovery import RecoveryPoint, latest_points
from ktlo.runbook.loader import find_runbook, hand_over, load_runbook
from ktlo.runbook.model import Runbook
from ktlo.runbook.params import validate_params
from ktlo.status import RunStatus
from ktlo.steps import registry
from ktlo.steps.context import flow_client
from ktlo.store import audit, runs
from tasks.dr import report, scratch, store, templates
from tasks.dr.drill import APPROVAL_STEP, ServiceResult, approval_wait_s, data_checks, judge, rpo_of
from tasks.dr.plan import Plan, Service, find_plan, load_plan

DRILL_FLOW = "dr-drill"
EXECUTE_FLOW = "dr-execute"
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


# Per running drill (by run id): each service's future, resolved with "verified?" when its
# child run ends. Every child run is started at once, so Prefect's cost of creating a flow
# run (a second or two on a busy server) overlaps the recovery of the services it waits for.
_verified: dict[str, dict[str, asyncio.Future[bool]]] = {}


# The run name is formatted from the parameters: `with_options` per service would rebuild the
# flow's parameter schema each time (~35 ms of CPU before the service can start).
@flow(name=SERVICE_FLOW, validate_parameters=False, flow_run_name="{plan}-{service[name]}")
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
    gates = _verified.get(drill_run_id or "", {})
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


def _warm_up(plan: Plan) -> None:
    """Load the step types and validate the recover runbooks before the clock starts: that is
    ktlo starting, not the service recovering (and an invalid runbook fails here)."""
    registry.load_plugins()
    for svc in plan.services:
        hand_over(load_runbook(find_runbook(svc.recover.runbook)))


def _points(plan: Plan) -> dict[tuple[str, str], RecoveryPoint]:
    wanted: dict[str, set[str]] = defaultdict(set)
    for svc in plan.services:
        for d in svc.data:
            wanted[d.provider].add(d.source)
    found = {}
    for provider, sources in wanted.items():
        for source, point in latest_points(provider, sources, verified=True).items():
            found[(provider, source)] = point
    return found


async def _cleanup_hook(flow: Any, flow_run: Any, state: Any) -> None:
    """A drill cancelled or crashed while served: clean its scratch from the serving process."""
    await asyncio.to_thread(scratch.cleanup, str(flow_run.id))


@flow(
    name=DRILL_FLOW,
    validate_parameters=False,
    on_cancellation=[_cleanup_hook],
    on_crashed=[_cleanup_hook],
)
async def drill_flow(plan: str, notes: str = "") -> dict[str, Any]:
    """Drill a DR plan: recover every service into scratch targets, verify, measure, clean up."""
    return await run_drill(plan, notes)


@flow(name=EXECUTE_FLOW, validate_parameters=False)
async def execute_flow(plan: str, notes: str = "") -> dict[str, Any]:
    """Recover a DR plan for real, into its services' `target:`s, once a human approved it."""
    return await run_drill(plan, notes, execute=True)


async def _approve(plan: Plan, run_id: str) -> tuple[bool, str]:
    """The approval step a real recovery waits behind (`ktlo approve RUN`, or the UI)."""
    rb = Runbook.model_validate(
        {
            "name": f"dr-execute-{plan.name}",
            "description": "DR: approve a real recovery",
            "steps": [
                {
                    "id": "approve",
                    "uses": APPROVAL_STEP,
                    "with": {
                        "message": f"Recover DR plan {plan.name} into its REAL targets "
                        f"({', '.join(s.name for s in plan.services)})",
                        "timeout_s": plan.approval_timeout_s,
                    },
                }
            ],
        }
    )
    _, outcome = await _run_inline(rb, {}, run_id)
    if outcome.status == RunStatus.FAILED:
        return False, f"not approved: {_why(outcome)}"
    out = outcome.outputs.get("approve") or {}
    return True, f"approved by {out.get('decided_by')}" + (
        f": {out['comment']}" if out.get("comment") else ""
    )


async def run_drill(plan_ref: str, notes: str = "", execute: bool = False) -> dict[str, Any]:
    """A drill (scratch targets, cleaned up) or, with `execute`, the real recovery: the same
    plan against its services' real targets, behind an approval, with the same report."""
    secrets.install_log_redaction()
    plan = load_plan(find_plan(plan_ref))
    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else str(uuid.uuid4())
    log = get_run_logger()
    real = {s.name: scratch.real_targets(s) for s in plan.services} if execute else {}
    await asyncio.to_thread(_warm_up, plan)
    kind = "execute" if execute else "drill"
    approved, approval_note = await _approve(plan, run_id) if execute else (True, "")
    started = datetime.now(UTC)
    actor = getpass.getuser()
    store.start_drill(run_id, plan.name, plan.content_hash)
    audit.record(
        f"dr.{kind}.start",
        plan.name,
        run_id=run_id,
        actor=actor,
        details={"plan_hash": plan.content_hash},
    )
    results: dict[str, ServiceResult] = {}
    targets: dict[str, scratch.Targets] = {}
    proofs: dict[str, scratch.Proof] = {}
    try:
        points = _points(plan)
        wave_of = {svc.name: n for n, wave in enumerate(plan.waves()) for svc in wave}
        runnable: list[Service] = []
        for svc in plan.services:
            missing = [d.source for d in svc.data if (d.provider, d.source) not in points]
            if missing or not approved:
                why = approval_note if not approved else "no verified recovery point of "
                results[svc.name] = ServiceResult(
                    name=svc.name,
                    wave=wave_of[svc.name],
                    tier=svc.tier,
                    rto_target_s=svc.rto_s,
                    rpo_target_s=svc.rpo_s,
                    error=f"not started: {why}{', '.join(missing) if approved else ''}",
                )
                continue
            targets[svc.name] = (
                real[svc.name]
                if execute
                else await asyncio.to_thread(scratch.allocate, run_id, svc)
            )
            runnable.append(svc)
        loop = asyncio.get_running_loop()
        _verified[run_id] = {svc.name: loop.create_future() for svc in runnable}
        log.info("recovering %s", ", ".join(s.name for s in runnable) or "nothing")
        outs = await asyncio.gather(
            *(
                service_flow(
                    plan=plan.name,
                    service=svc.model_dump(),
                    targets=targets[svc.name].model_dump(),
                    points=[
                        points[(d.provider, d.source)].model_dump(mode="json") for d in svc.data
                    ],
                    others={k: v.model_dump() for k, v in targets.items()},
                    wave=wave_of[svc.name],
                    drill_started=started,
                    drill_run_id=run_id,
                )
                for svc in runnable
            )
        )
        for svc, out in zip(runnable, outs, strict=True):
            results[svc.name] = ServiceResult.model_validate(out)
    finally:
        _verified.pop(run_id, None)
        for name in [] if execute else targets:  # a real recovery is kept, of course
            proofs[name] = await asyncio.to_thread(scratch.cleanup, run_id, name)
        leftover = scratch.Proof() if execute else await asyncio.to_thread(scratch.cleanup, run_id)
    for name, result in results.items():
        proof = proofs.get(name, scratch.Proof())
        result.cleaned_up = proof.ok
        result.cleanup = proof.model_dump()
    ordered = [results[s.name] for wave in plan.waves() for s in wave if s.name in results]
    verdict, verdict_notes = judge(plan, ordered, leftover.errors)
    if approval_note:
        verdict_notes.insert(0, approval_note)
    if notes:
        verdict_notes.append(f"operator: {notes}")
    doc = report.document(
        plan=plan,
        run_id=run_id,
        verdict=verdict,
        services=ordered,
        notes=verdict_notes,
        started=started,
        finished=datetime.now(UTC),
        started_by=actor,
        flow_run_url=_flow_run_url(run_id),
        mode=kind,
    )
    store.finish_drill(run_id, verdict, doc)
    audit.record(
        f"dr.{kind}.finish",
        plan.name,
        run_id=run_id,
        actor=actor,
        details={"verdict": verdict, "notes": verdict_notes},
    )
    await _publish(plan, doc)
    log.info("%s of %s: %s", kind, plan.name, verdict)
    return doc


async def _publish(plan: Plan, doc: dict[str, Any]) -> None:
    try:
        await MarkdownArtifact(
            markdown=secrets.redact(report.markdown(doc)),
            key=f"dr-drill-{plan.name}".replace("_", "-"),
            description=f"DR drill of {plan.name}: {doc['verdict']}",
        ).acreate(client=flow_client())
    except Exception as exc:  # the report is stored; the artifact is a convenience
        get_run_logger().warning("could not publish the drill artifact: %s", exc)
