"""The `approval` step: pause the flow run until a person approves or rejects.

The Prefect UI shows the decision form on the paused run (Resume); `ktlo approve RUN_ID`
does the same from a terminal. A timeout counts as a rejection. Decisions are audited.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import apause_flow_run
from pydantic import Field

from ktlo.engine import approvals
from ktlo.errors import StepFailed
from ktlo.status import ApprovalStatus
from ktlo.steps.context import get_step_context
from ktlo.steps.registry import StepInput, StepOutput, step_task

POLL_INTERVAL_S = 2


class ApprovalInput(StepInput):
    message: str
    timeout_s: float = Field(default=3600, gt=0)
    approvers: list[str] = Field(default_factory=list, description="who may decide (empty: anyone)")


class ApprovalOutput(StepOutput):
    approved: bool
    decided_by: str
    comment: str


def summarize(out: ApprovalOutput) -> str:
    return f"approved by {out.decided_by}" + (f": {out.comment}" if out.comment else "")


@step_task("approval", ApprovalInput, ApprovalOutput, summarize=summarize)
async def wait_for_approval(inputs: ApprovalInput) -> ApprovalOutput:
    """Pause the run for a human decision."""
    ctx = get_step_context()
    if ctx is None or ctx.flow_run_id is None:
        raise StepFailed("approval steps only run inside a runbook flow run")
    logger = get_run_logger()
    record = approvals.request(
        flow_run_id=ctx.flow_run_id,
        run_id=ctx.run_id,
        runbook=ctx.runbook,
        step_id=ctx.step_id,
        message=inputs.message,
        approvers=inputs.approvers,
        timeout_s=inputs.timeout_s,
    )
    form = approvals.decision_form()
    deadline = time.monotonic() + inputs.timeout_s
    logger.warning(
        "Waiting for approval: %s — resume this run in the UI or run: ktlo approve %s [--reject]",
        inputs.message,
        ctx.flow_run_id,
    )
    while True:
        remaining = int(max(1, deadline - time.monotonic()))
        try:
            answer: Any = await apause_flow_run(
                wait_for_input=form, timeout=remaining, poll_interval=POLL_INTERVAL_S
            )
        except FlowPauseTimeout:
            approvals.decide(
                record.id or 0, ApprovalStatus.TIMED_OUT, by=None, comment="no decision in time"
            )
            raise StepFailed(
                f"approval timed out after {inputs.timeout_s:g}s (counts as rejected)"
            ) from None
        who = answer.approver.strip()
        if not approvals.allowed(record, who):
            approvals.refuse(record, who)
            logger.warning(
                "%s may not decide this approval (approvers: %s)", who, ", ".join(inputs.approvers)
            )
            if time.monotonic() >= deadline:
                approvals.decide(
                    record.id or 0,
                    ApprovalStatus.TIMED_OUT,
                    by=None,
                    comment="no valid decision in time",
                )
                raise StepFailed("approval timed out (counts as rejected)")
            continue
        status = (
            ApprovalStatus.APPROVED if answer.decision == "approve" else ApprovalStatus.REJECTED
        )
        approvals.decide(record.id or 0, status, by=who, comment=answer.comment)
        if status == ApprovalStatus.REJECTED:
            reason = f": {answer.comment}" if answer.comment else ""
            raise StepFailed(f"rejected by {who}{reason}")
        logger.info("Approved by %s", who)
        return ApprovalOutput(approved=True, decided_by=who, comment=answer.comment)
