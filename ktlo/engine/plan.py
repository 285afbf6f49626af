"""`--dry-run`: the order steps would run in and their inputs, rendered as far as is known."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ktlo.engine.executor import template_env
from ktlo.errors import KtloError
from ktlo.runbook.model import Runbook
from ktlo.runbook.rendering import render_inputs
from ktlo.runbook.templating import evaluate, expression_source
from ktlo.steps import registry


class Placeholder:
    """Stands for a value only known at run time; renders as its own path."""

    def __init__(self, path: str):
        self._path = path

    def __getattr__(self, name: str) -> Placeholder:
        if name.startswith("__"):
            raise AttributeError(name)
        return Placeholder(f"{self._path}.{name}")

    def __getitem__(self, key: Any) -> Placeholder:
        return Placeholder(f"{self._path}[{key!r}]")

    def __str__(self) -> str:
        return f"<{self._path}>"

    __repr__ = __str__

    def __bool__(self) -> bool:
        return True


@dataclass
class PlannedStep:
    wave: int
    id: str
    uses: str
    needs: list[str]
    condition: str | None
    inputs: Any
    options: str


def waves(runbook: Runbook) -> dict[str, int]:
    deps = runbook.dependencies()
    level: dict[str, int] = {}

    def visit(step_id: str) -> int:
        if step_id not in level:
            level[step_id] = 1 + max((visit(d) for d in deps[step_id]), default=0)
        return level[step_id]

    for step in runbook.steps:
        visit(step.id)
    return level


def plan(runbook: Runbook, params: dict[str, Any]) -> list[PlannedStep]:
    context: dict[str, Any] = {
        "params": params,
        "steps": {s.id: Placeholder(f"steps.{s.id}") for s in runbook.steps},
        "env": template_env(),
        "secret": lambda name: f"<secret:{name}>",
        "run": Placeholder("run"),
        "incident": Placeholder("incident"),
    }
    level = waves(runbook)
    deps = runbook.dependencies()
    planned = []
    for step in runbook.steps:
        step_type = registry.get(step.uses)
        how = registry.renderings(step_type, step.with_) if step_type else {}
        try:
            inputs = render_inputs(step.with_, how, context)
        except KtloError:
            inputs = step.with_
        condition = None
        if step.if_ is not None:
            expr = expression_source(step.if_)
            try:
                value = evaluate(expr, context)
                condition = f"{expr} → {value}"
            except KtloError:
                condition = expr
        options = []
        if step.retries:
            options.append(f"retries {step.retries} every {step.retry_delay_s:g}s")
        if step.timeout_s:
            options.append(f"timeout {step.timeout_s:g}s")
        if step.on_failure != "abort":
            options.append(f"on_failure {step.on_failure}")
        planned.append(
            PlannedStep(
                level[step.id],
                step.id,
                step.uses,
                deps[step.id],
                condition,
                inputs,
                ", ".join(options),
            )
        )
    return sorted(planned, key=lambda p: p.wave)
