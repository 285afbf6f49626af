"""Approvals: what is waiting for whom, and who decided what (the store side of `approval`)."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field
from sqlmodel import col, select

from ktlo.errors import KtloError
from ktlo.status import ApprovalStatus
from ktlo.store import audit
from ktlo.store.db import session
from ktlo.store.models import Approval, utcnow

Decision = Literal["approve", "reject"]


def decision_form() -> type:
    """The Prefect RunInput the UI renders as the approval form (built lazily: imports Prefect)."""
    from prefect.input import RunInput

    class ApprovalDecision(RunInput):
        """Approve or reject this step."""

        decision: Decision = Field(description="approve to continue the run, reject to stop it")
        approver: str = Field(
            min_length=1, description="your name (checked against the step's approvers)"
        )
        comment: str = Field(default="", description="why (goes to the audit trail)")

    return ApprovalDecision


def request(
    *,
    flow_run_id: str,
    run_id: str,
    runbook: str,
    step_id: str,
    message: str,
    approvers: list[str],
    timeout_s: float,
) -> Approval:
    with session() as s:
        approval = Approval(
            flow_run_id=flow_run_id,
            run_id=run_id,
            runbook=runbook,
            step_id=step_id,
            message=message,
            approvers=approvers,
            expires_at=utcnow() + timedelta(seconds=timeout_s),
        )
        s.add(approval)
        s.flush()
        audit.record(
            "approval.requested",
            f"{runbook}/{step_id}",
            run_id=run_id,
            details={"message": message, "approvers": approvers, "timeout_s": timeout_s},
            s=s,
        )
        return approval


def decide(approval_id: int, status: str, *, by: str | None, comment: str | None) -> Approval:
    with session() as s:
        approval = s.get(Approval, approval_id)
        if approval is None:
            raise KtloError(f"approval {approval_id} not found")
        approval.status = status
        approval.decided_by = by
        approval.decided_at = utcnow()
        approval.comment = comment
        s.add(approval)
        audit.record(
            f"approval.{status}",
            f"{approval.runbook}/{approval.step_id}",
            run_id=approval.run_id,
            actor=by or "ktlo",
            details={"comment": comment, "decided_at": approval.decided_at.isoformat()},
            s=s,
        )
        return approval


def refuse(approval: Approval, by: str) -> None:
    audit.record(
        "approval.refused",
        f"{approval.runbook}/{approval.step_id}",
        run_id=approval.run_id,
        actor=by,
        details={"reason": f"{by} is not one of the approvers {approval.approvers}"},
    )


def pending(flow_run_id: str | None = None) -> list[Approval]:
    with session() as s:
        query = select(Approval).where(Approval.status == ApprovalStatus.PENDING)
        if flow_run_id:
            query = query.where(Approval.flow_run_id == flow_run_id)
        return list(s.exec(query.order_by(col(Approval.requested_at))).all())


def allowed(approval: Approval, who: str) -> bool:
    if not approval.approvers:
        return True
    short = who.split("@", 1)[0]
    return who in approval.approvers or short in approval.approvers
