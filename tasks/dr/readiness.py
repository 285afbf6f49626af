"""Readiness: could each plan be recovered now, as its last drill proved?

For every service: each data source has a verified recovery point younger than the RPO, the
recover runbook exists and validates with the plan's parameters, the verify checks validate;
for the plan: it loads, and its last drill passed with the plan as it is now (content hash).
Recovery points come from the providers in `ktlo.recovery`, one query per provider for all
plans. Each pass also cleans the scratch of drills whose process died.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ktlo import notify
from ktlo.errors import KtloError, Problem, RunbookInvalid
from ktlo.recovery import RecoveryPoint, latest_points
from ktlo.runbook.loader import find_runbook, load_runbook
from ktlo.runbook.model import Runbook
from ktlo.runbook.params import validate_params
from ktlo.runbook.validation import check_runbook
from ktlo.store import audit
from tasks.dr import scratch, store, templates
from tasks.dr.plan import Plan, Service, load_plans


class PlanReadiness(BaseModel):
    name: str
    ready: bool
    problems: list[str] = Field(default_factory=list)
    plan_hash: str = ""
    last_drill: dict[str, Any] | None = None


class Report(BaseModel):
    plans: list[PlanReadiness]
    cleaned: dict[str, Any] = Field(default_factory=dict, description="scratch of dead drills")
    notified: list[str] = Field(default_factory=list)


class _Checker:
    """Caches what many services share (runbooks, identical recover/verify specs) in one pass."""

    def __init__(self) -> None:
        self.runbooks: dict[str, Runbook | str] = {}
        self.services: dict[str, list[str]] = {}

    def runbook(self, name: str) -> Runbook | str:
        if name not in self.runbooks:
            try:
                self.runbooks[name] = load_runbook(find_runbook(name))
            except RunbookInvalid as exc:
                self.runbooks[name] = f"recover runbook '{name}' is invalid: {exc.problems[0]}"
            except KtloError as exc:
                self.runbooks[name] = f"recover runbook '{name}': {str(exc).splitlines()[0]}"
        return self.runbooks[name]

    def service(self, plan: Plan, svc: Service) -> list[str]:
        """Problems of a service's runbook and checks; services that differ only in what
        their templates fill in (most of them) are checked once."""
        names = [s.name for s in plan.services]
        key = json.dumps(
            [svc.recover.model_dump(), svc.verify, len(svc.data), names],
            sort_keys=True,
            default=str,
        )
        if key not in self.services:
            self.services[key] = self._service(plan, svc)
        return self.services[key]

    def _service(self, plan: Plan, svc: Service) -> list[str]:
        problems: list[str] = []
        ctx = templates.placeholder_context(svc, plan.services)
        rb = self.runbook(svc.recover.runbook)
        if isinstance(rb, str):
            problems.append(rb)
        else:
            try:
                validate_params(rb, templates.recover_params(svc, ctx))
            except KtloError as exc:
                problems.append(f"recover params: {str(exc).splitlines()[0]}")
        if svc.verify:
            problems += self._checks(svc, ctx)
        return problems

    @staticmethod
    def _checks(svc: Service, ctx: dict[str, Any]) -> list[str]:
        try:
            rb = templates.verify_runbook("dr-verify", templates.verify_checks(svc, ctx))
        except (KtloError, ValueError) as exc:
            return [f"verify: {str(exc).splitlines()[0]}"]
        return [f"verify: {_message(p)}" for p in check_runbook(rb)]


def _message(problem: Problem) -> str:
    return problem.message.removeprefix("step 'verify': with.")


def assess(plans: list[Plan], now: datetime | None = None) -> list[PlanReadiness]:
    now = now or datetime.now(UTC)
    wanted: dict[str, set[str]] = defaultdict(set)
    for plan in plans:
        for svc in plan.services:
            for d in svc.data:
                wanted[d.provider].add(d.source)
    points: dict[str, dict[str, RecoveryPoint]] = {}
    provider_errors: dict[str, str] = {}
    for provider, sources in wanted.items():
        try:
            points[provider] = latest_points(provider, sources, verified=True)
        except KtloError as exc:
            provider_errors[provider] = str(exc)
    drills = store.last_drills([p.name for p in plans])
    checker = _Checker()
    out = []
    for plan in plans:
        problems: list[str] = []
        for svc in plan.services:
            for d in svc.data:
                if d.provider in provider_errors:
                    problems.append(f"{svc.name}: {provider_errors[d.provider]}")
                    continue
                point = points[d.provider].get(d.source)
                if point is None:
                    problems.append(f"{svc.name}: no verified {d.provider} of '{d.source}'")
                    continue
                age = (now - point.time).total_seconds()
                if age > svc.rpo_s:
                    problems.append(
                        f"{svc.name}: newest verified {d.provider} of '{d.source}' is "
                        f"{age:.0f} s old, over the RPO of {svc.rpo_s:.0f} s"
                    )
            problems += [f"{svc.name}: {p}" for p in checker.service(plan, svc)]
        drill = drills.get(plan.name)
        if drill is None:
            problems.append("needs drill: never drilled")
        elif drill.verdict != store.Verdict.PASSED:
            problems.append(f"needs drill: last drill {drill.run_id[:8]} {drill.verdict}")
        elif drill.plan_hash != plan.content_hash:
            problems.append(f"needs drill: plan changed since drill {drill.run_id[:8]}")
        last = None
        if drill is not None:
            last = {"run_id": drill.run_id, "verdict": drill.verdict, "plan_hash": drill.plan_hash}
        out.append(
            PlanReadiness(
                name=plan.name,
                ready=not problems,
                problems=problems,
                plan_hash=plan.content_hash,
                last_drill=last,
            )
        )
    return out


def readiness(name: str | None = None, directory: Path | None = None) -> Report:
    """One readiness pass: clean dead drills' scratch, assess, notify plans that changed."""
    cleaned = scratch.reap()
    plans, problems = load_plans(directory)
    results = assess([p for p in plans if name is None or p.name == name])
    bad_files = (
        []
        if name
        else [PlanReadiness(name=p.path, ready=False, problems=[str(p)]) for p in problems]
    )
    if name is not None and not results:
        raise KtloError(f"no valid plan named '{name}'" + (f": {problems[0]}" if problems else ""))
    notified = _notify_changes({p.name: p for p in plans}, results)
    return Report(plans=results + bad_files, cleaned=cleaned, notified=notified)


def _notify_changes(plans: dict[str, Plan], results: list[PlanReadiness]) -> list[str]:
    """Notify a plan's targets once per change of its readiness (the first pass only records)."""
    known = store.readiness_states()
    notified = []
    for result in results:
        before = known.get(result.name)
        if before is not None and before.ready == result.ready:
            continue
        store.save_readiness(result.name, result.ready, result.problems)
        if before is None:
            continue
        audit.record(
            "dr.readiness",
            result.name,
            details={"ready": result.ready, "problems": result.problems},
        )
        targets = plans[result.name].notify
        if not targets:
            continue
        state = "ready" if result.ready else "NOT READY"
        body = "\n".join(f"- {p}" for p in result.problems) or "every check passes"
        try:
            notify.send(targets, f"DR plan {result.name} is {state}", body)
        except KtloError:
            continue
        notified.append(result.name)
    return notified
