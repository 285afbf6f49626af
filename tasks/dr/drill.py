"""What a drill measures and how it is judged; the orchestration is flows/dr.py.

RTO achieved: drill start → the service's verify checks passed. RPO achieved: the drill's
reference time (its start) minus the time of the oldest data restored for the service. Data
checks compare what the recover runbook's restore steps report (the sha256 of the object
read back) with what the catalog recorded. Approval waits inside recover runbooks are
counted separately so a slow human is not mistaken for a slow recovery.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from ktlo.recovery import RecoveryPoint
from ktlo.store.runs import steps_of
from tasks.dr.plan import Plan
from tasks.dr.store import Verdict

APPROVAL_STEP = "approval"


class DataCheck(BaseModel):
    name: str
    expected: Any
    actual: Any
    ok: bool


class ServiceResult(BaseModel):
    name: str
    wave: int
    tier: int
    rto_target_s: float
    rto_achieved_s: float | None = None
    rpo_target_s: float
    rpo_achieved_s: float | None = None
    verified: bool = False
    cleaned_up: bool = False
    started_s: float | None = Field(default=None, description="from drill start")
    recovered_s: float | None = None
    verified_s: float | None = None
    approval_wait_s: float = 0.0
    recovery_points: list[RecoveryPoint] = Field(default_factory=list)
    data_checks: list[DataCheck] = Field(default_factory=list)
    recover_run_id: str | None = None
    verify_run_id: str | None = None
    service_run_id: str | None = None
    error: str | None = None
    cleanup: dict[str, Any] = Field(default_factory=dict)


def rpo_of(points: list[RecoveryPoint], reference: datetime) -> float | None:
    if not points:
        return None
    return round(max((reference - p.time).total_seconds() for p in points), 3)


def data_checks(points: list[RecoveryPoint], outputs: dict[str, Any]) -> list[DataCheck]:
    """Every restore step output naming a point's id: its checksum must be the catalog's."""
    checks = []
    for point in points:
        restored = [
            o for o in outputs.values() if isinstance(o, dict) and o.get("backup_id") == point.id
        ]
        expected = point.checksums.get("sha256")
        if not restored:
            checks.append(
                DataCheck(
                    name=f"{point.source}: restored", expected=point.id, actual=None, ok=False
                )
            )
            continue
        for out in restored:
            actual = out.get("sha256")
            checks.append(
                DataCheck(
                    name=f"{point.source}: sha256",
                    expected=expected,
                    actual=actual,
                    ok=actual == expected,
                )
            )
            for table, rows in point.row_counts.items():
                got = (out.get("checks") or {}).get("row_counts", {}).get(table)
                checks.append(
                    DataCheck(
                        name=f"{point.source}: rows of {table}",
                        expected=rows,
                        actual=got,
                        ok=got == rows,
                    )
                )
    return checks


def approval_wait_s(run_ids: list[str | None]) -> float:
    total = 0.0
    for run_id in run_ids:
        if run_id:
            total += sum(
                (s.duration_ms or 0) / 1000 for s in steps_of(run_id) if s.uses == APPROVAL_STEP
            )
    return round(total, 3)


def judge(
    plan: Plan, results: list[ServiceResult], cleanup_errors: list[str]
) -> tuple[str, list[str]]:
    """The verdict and the notes that explain it."""
    notes = []
    for r in results:
        if r.error:
            notes.append(f"{r.name}: {r.error}")
        elif not r.verified:
            notes.append(f"{r.name}: not verified")
        if r.rto_achieved_s is not None and r.rto_achieved_s - r.approval_wait_s > r.rto_target_s:
            notes.append(
                f"{r.name}: RTO {r.rto_achieved_s:.1f} s over the target {r.rto_target_s:.0f} s"
            )
        if r.rpo_achieved_s is not None and r.rpo_achieved_s > r.rpo_target_s:
            notes.append(
                f"{r.name}: RPO {r.rpo_achieved_s:.0f} s over the target {r.rpo_target_s:.0f} s"
            )
        notes += [f"{r.name}: data check failed: {c.name}" for c in r.data_checks if not c.ok]
        if not r.cleaned_up:
            notes.append(f"{r.name}: scratch not cleaned up")
    notes += [f"cleanup: {e}" for e in cleanup_errors]
    verdict = Verdict.FAILED if notes else Verdict.PASSED
    if verdict == Verdict.PASSED:
        notes.append(
            f"all {len(plan.services)} services recovered and verified within their objectives"
        )
    return verdict, notes
