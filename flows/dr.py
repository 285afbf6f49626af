"""The DR drill flow: recover a plan's services into scratch targets in dependency order,
verify, measure, and always clean up.

Each service is a child flow run (`dr-service`, flows/dr_service.py); its recover runbook and
verify checks run inside it as task runs (each with a ktlo run record), all visible in the
Prefect UI. Independent services recover concurrently, and a service whose dependency was not
verified is not started. Cleanup runs as soon as the services' work ended, in `finally`
(errors and Ctrl-C), in the flow's cancellation/crash hooks (a served run that is cancelled
or killed), and otherwise in the next readiness pass (the scratch journal names the dead
owner).
"""

from __future__ import annotations

import asyncio
import getpass
import uuid
from collections import defaultdict
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import MarkdownArtifact
from prefect.context import FlowRunContext

from flows.dr_service import _run_inline, _why, run_services, service_flow
from flows.runbook import _flow_run_url
from ktlo import secrets
from ktlo.recovery import RecoveryPoint, latest_points
from ktlo.runbook.loader import find_runbook, hand_over, load_runbook
from ktlo.runbook.model import Runbook
from ktlo.status import RunStatus
from ktlo.steps import registry
from ktlo.steps.context import flow_client
from ktlo.store import audit
from tasks.dr import report, scratch, store
from tasks.dr.drill import APPROVAL_STEP, ServiceResult, judge
from tasks.dr.plan import Plan, Service, find_plan, load_plan

DRILL_FLOW = "dr-drill"
EXECUTE_FLOW = "dr-execute"
SERVICE_FLOW = "dr-service"


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
    leftover = scratch.Proof()
    cleaned = False

    async def clean_up() -> None:
        """Once, as soon as the services' work ended (or failed): a real recovery is kept."""
        nonlocal cleaned, leftover
        if cleaned or execute:
            return
        cleaned = True
        for name in targets:
            proofs[name] = await asyncio.to_thread(scratch.cleanup, run_id, name)
        leftover = await asyncio.to_thread(scratch.cleanup, run_id)

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
        log.info("recovering %s", ", ".join(s.name for s in runnable) or "nothing")

        def child(svc: Service) -> Awaitable[dict[str, Any]]:
            return service_flow(
                plan=plan.name,
                service=svc.model_dump(),
                targets=targets[svc.name].model_dump(),
                points=[points[(d.provider, d.source)].model_dump(mode="json") for d in svc.data],
                others={k: v.model_dump() for k, v in targets.items()},
                wave=wave_of[svc.name],
                drill_started=started,
                drill_run_id=run_id,
            )

        waves = [[s for s in wave if s.name in targets] for wave in plan.waves()]
        outs = await run_services(run_id, waves, child, clean_up)
        for name, out in outs.items():
            results[name] = ServiceResult.model_validate(out)
    finally:
        await clean_up()
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
