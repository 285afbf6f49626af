"""One deployment per DR plan (`dr-drill/dr-drill-<plan>`): the drill flow with the plan's name as its
parameter and the plan's schedule, so drills run on a schedule and from the Prefect UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ktlo.errors import Problem
from ktlo.orchestration.deployments import WORK_POOL, schedule_entry
from ktlo.settings import get_settings
from tasks.dr.plan import Plan, load_plans, plan_files

DRILL_ENTRYPOINT = "flows/dr.py:drill_flow"


def plans_dir_beside(runbooks: Path) -> Path:
    configured = get_settings().plans
    return configured.expanduser().resolve() if configured else runbooks.parent / "plans"


def deployment(plan: Plan) -> dict[str, Any]:
    return {
        "name": f"dr-drill-{plan.name}",
        "description": plan.description or f"DR drill of plan {plan.name}",
        "entrypoint": DRILL_ENTRYPOINT,
        "tags": ["ktlo", "dr"],
        "parameters": {"plan": plan.name},
        "enforce_parameter_schema": True,
        "schedules": [schedule_entry(plan.schedule)] if plan.schedule else [],
        "work_pool": {"name": WORK_POOL},
    }


def plan_deployments(runbooks: Path) -> tuple[list[dict[str, Any]], list[Problem]]:
    plans, problems = load_plans(plans_dir_beside(runbooks))
    return [deployment(p) for p in plans], problems


def plan_source_files(runbooks: Path) -> list[Path]:
    """The plan files the drill deployments come from (`ktlo serve` watches them)."""
    return plan_files(plans_dir_beside(runbooks))
