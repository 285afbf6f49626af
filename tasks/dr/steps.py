"""The DR domain's step type: `dr.readiness`, so a runbook can check readiness on a schedule
(and notify plans that stop being ready); and the plans' drill deployments."""

from __future__ import annotations

import asyncio

from pydantic import Field

from ktlo.errors import StepFailed
from ktlo.orchestration.deployments import register_source
from ktlo.steps.registry import StepInput, StepOutput, step_task
from tasks.dr.deployments import plan_deployments, plan_source_files
from tasks.dr.readiness import readiness

register_source("dr-plans", plan_deployments, files=plan_source_files)


class ReadinessInput(StepInput):
    plan: str | None = Field(default=None, description="one plan (default: every plan)")
    fail_if_not_ready: bool = Field(
        default=False, description="fail the step if a plan is not ready"
    )


class ReadinessOutput(StepOutput):
    plans: list[dict[str, object]]
    ready: list[str]
    not_ready: list[str]
    notified: list[str]


def _summary(out: ReadinessOutput) -> str:
    return f"{len(out.ready)} ready, {len(out.not_ready)} not ready: {', '.join(out.not_ready)}"


@step_task("dr.readiness", ReadinessInput, ReadinessOutput, summarize=_summary)
async def readiness_step(inputs: ReadinessInput) -> ReadinessOutput:
    """Check DR plans' readiness (backups within RPO, runbooks valid, drilled since changed)."""
    report = await asyncio.to_thread(readiness, inputs.plan)
    out = ReadinessOutput(
        plans=[p.model_dump() for p in report.plans],
        ready=[p.name for p in report.plans if p.ready],
        not_ready=[p.name for p in report.plans if not p.ready],
        notified=report.notified,
    )
    if inputs.fail_if_not_ready and out.not_ready:
        raise StepFailed(f"not ready: {', '.join(out.not_ready)}")
    return out
