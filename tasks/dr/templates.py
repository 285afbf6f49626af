"""What a plan's templates see: `scratch.*` (the service's scratch targets), `data[i].*` (the
recovery points being restored) and `services.<name>.scratch.*` (a dependency's targets, so
an app can be pointed at its restored database). Rendered with the runbook sandbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ktlo.recovery import RecoveryPoint
from ktlo.runbook.model import Runbook
from ktlo.runbook.templating import render
from tasks.dr.plan import Service
from tasks.dr.scratch import Targets

VERIFY_STEP = "health.sweep"


def context(
    targets: Targets, points: list[RecoveryPoint], others: dict[str, Targets]
) -> dict[str, Any]:
    return {
        "scratch": targets.model_dump(),
        "data": [p.model_dump(mode="json") for p in points],
        "services": {name: {"scratch": t.model_dump()} for name, t in others.items()},
    }


def placeholder_context(svc: Service, plan_services: list[Service]) -> dict[str, Any]:
    """A context of the right shape with made-up values, to validate templates before a drill."""
    fake = Targets(
        dir="/scratch/ktlo-dr-check",  # never created: only its shape matters
        port=1,
        database="ktlo_dr_check",
        postgres_dsn="dbname=postgres",
        database_dsn="dbname=ktlo_dr_check",
    )
    point = RecoveryPoint(provider="backup", source="x", id="0" * 12, time=datetime.now(UTC))
    return context(fake, [point] * len(svc.data), {s.name: fake for s in plan_services})


def recover_params(svc: Service, ctx: dict[str, Any]) -> dict[str, Any]:
    return dict(render(svc.recover.params, ctx))


def verify_checks(svc: Service, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    return list(render(svc.verify, ctx))


def verify_runbook(name: str, checks: list[dict[str, Any]]) -> Runbook:
    """The runbook a drill runs to verify a service: one health.sweep of its checks. Alert
    state is kept under the drill's own check names, and no one is alerted."""
    return Runbook.model_validate(
        {
            "name": name,
            "description": "DR drill: verify a recovered service",
            "steps": [
                {
                    "id": "verify",
                    "uses": VERIFY_STEP,
                    "with": {"checks": checks, "fail_on_failure": True},
                }
            ],
        }
    )
