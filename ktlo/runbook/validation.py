"""Whole-runbook checks beyond the schema: step types, inputs, the DAG, templates, channels.

Everything here runs before a single step does; an invalid runbook never starts.
"""

from __future__ import annotations

import difflib
from typing import Any

from jinja2 import TemplateSyntaxError
from pydantic import BaseModel, ValidationError

from ktlo.errors import Problem
from ktlo.runbook.incident import INCIDENT_FIELDS
from ktlo.runbook.model import Runbook
from ktlo.runbook.params import params_model
from ktlo.runbook.problems import pydantic_problems
from ktlo.runbook.rendering import problems as rendering_problems
from ktlo.runbook.templating import (
    ENV,
    ROOT_NAMES,
    Reference,
    analyse,
    expression_source,
    is_template,
    templates_in,
)
from ktlo.runbook.yamlsrc import MISSING, Loc, Source, child
from ktlo.steps import registry

STEP_ATTRIBUTES = ("output", "status", "error")
RUN_ATTRIBUTES = ("id", "runbook", "url", "flow_run_id")


def check_runbook(runbook: Runbook) -> list[Problem]:
    source = runbook.source or Source(path=f"<{runbook.name}>", data={})
    checker = _Checker(runbook, source)
    checker.run()
    return sorted(checker.problems, key=lambda p: (p.line, p.message))


class Ancestry:
    """Which steps finish before which (transitively), ignoring unknown edges.

    Each step's ancestors are one integer used as a bit set, built in topological order:
    a set of names per step made validation quadratic in memory (467 MB for 4,000 steps in
    file order, where each step has every earlier one as an ancestor).
    """

    def __init__(self, deps: dict[str, list[str]]):
        self._bit = {node: 1 << i for i, node in enumerate(deps)}
        edges = {
            node: [d for d in dict.fromkeys(needs) if d in deps and d != node]
            for node, needs in deps.items()
        }
        self._mask: dict[str, int] = {}
        order = _topological(edges)
        placed = set(order)
        order += [node for node in deps if node not in placed]  # on a cycle: as far as known
        for node in order:
            mask = 0
            for dep in edges[node]:
                mask |= self._bit[dep] | self._mask.get(dep, 0)
            self._mask[node] = mask

    def before(self, target: str, step: str) -> bool:
        """`target` is guaranteed to finish before `step` starts."""
        bit = self._bit.get(target)
        return bit is not None and bool(self._mask.get(step, 0) & bit)


def _topological(edges: dict[str, list[str]]) -> list[str]:
    """Kahn's order of the nodes not on a cycle (dependencies first)."""
    waiting = {node: len(deps) for node, deps in edges.items()}
    users: dict[str, list[str]] = {node: [] for node in edges}
    for node, deps in edges.items():
        for dep in deps:
            users[dep].append(node)
    ready = [node for node, count in waiting.items() if count == 0]
    order: list[str] = []
    while ready:
        node = ready.pop()
        order.append(node)
        for user in users[node]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    return order


def find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a path that ends where it starts, or None (iterative: a chain
    of thousands of steps is deeper than Python's recursion limit)."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(deps, white)
    for root in deps:
        if colour[root] != white:
            continue
        stack: list[str] = [root]
        pending = [iter(deps.get(root, []))]
        colour[root] = grey
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                colour[stack.pop()] = black
                pending.pop()
                continue
            if dep not in colour:
                continue
            if colour[dep] == grey:
                return [*stack[stack.index(dep) :], dep]
            if colour[dep] == white:
                colour[dep] = grey
                stack.append(dep)
                pending.append(iter(deps.get(dep, [])))
    return None


def _templated_along(data: Any, loc: Loc) -> bool:
    node = data
    for part in loc:
        if is_template(node):
            return True
        node = child(node, part)
        if node is MISSING:
            return False
    return is_template(node)


class _Checker:
    def __init__(self, runbook: Runbook, source: Source):
        self.rb = runbook
        self.src = source
        self.problems: list[Problem] = []
        self.deps = runbook.dependencies()
        self.ancestry = Ancestry(self.deps)
        self.step_ids = [s.id for s in runbook.steps]

    def add(self, loc: Loc, message: str) -> None:
        self.problems.append(self.src.problem(loc, message))

    def run(self) -> None:
        self.check_parameters()
        self.check_ids_and_needs()
        for i, step in enumerate(self.rb.steps):
            self.check_step(i, step)
        self.check_channels()

    def check_parameters(self) -> None:
        defaults = {
            name: spec.default
            for name, spec in self.rb.parameters.items()
            if not spec.is_required and spec.default is not None
        }
        try:
            params_model(self.rb).model_validate(defaults)
        except ValidationError as exc:
            for err in exc.errors():
                if err["type"] == "missing" or not err["loc"]:
                    continue
                name = str(err["loc"][0])
                self.add(
                    ("parameters", name, "default"),
                    f"parameter '{name}': default {defaults.get(name)!r}: {err['msg']}",
                )

    def check_ids_and_needs(self) -> None:
        seen: set[str] = set()
        for i, step in enumerate(self.rb.steps):
            if step.id in seen:
                self.add(("steps", i, "id"), f"duplicate step id '{step.id}'")
            seen.add(step.id)
            for j, need in enumerate(step.needs or []):
                if need == step.id:
                    self.add(("steps", i, "needs", j), f"step '{step.id}' needs itself")
                elif need not in self.deps:
                    hint = difflib.get_close_matches(need, self.step_ids, n=1)
                    extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                    self.add(
                        ("steps", i, "needs", j),
                        f"step '{step.id}' needs unknown step '{need}'{extra}",
                    )
        cycle = find_cycle({k: [d for d in v if d != k] for k, v in self.deps.items()})
        if cycle:
            first = self.step_ids.index(cycle[0])
            self.add(("steps", first, "needs"), "dependency cycle: " + " → ".join(cycle))

    def check_step(self, i: int, step: Any) -> None:
        base: Loc = ("steps", i)
        step_type = registry.get(step.uses)
        if step_type is None:
            known = list(registry.all_types())
            hint = difflib.get_close_matches(step.uses, known, n=1)
            extra = f"; did you mean '{hint[0]}'?" if hint else f" (known: {', '.join(known)})"
            self.add((*base, "uses"), f"step '{step.id}': unknown step type '{step.uses}'{extra}")
        else:
            self.check_inputs(base, step, step_type)
        for loc, text in templates_in(step.with_, (*base, "with")):
            self.check_template(loc, text, step.id)
        if isinstance(step.if_, str):
            self.check_template(
                (*base, "if"), expression_source(step.if_), step.id, expression=True
            )

    def check_inputs(self, base: Loc, step: Any, step_type: registry.StepType) -> None:
        data = step.with_
        try:
            step_type.input_model.model_validate(data)
        except ValidationError as exc:
            self.problems.extend(
                pydantic_problems(
                    self.src,
                    exc,
                    step_type.input_model,
                    base=(*base, "with"),
                    skip=lambda loc: _templated_along(data, loc),
                )
            )
        if step_type.validate is not None:
            for loc, message in step_type.validate(data, self.rb):
                self.add((*base, "with", *loc), f"step '{step.id}': {message}")
        for field_loc, message in rendering_problems(data, registry.renderings(step_type, data)):
            self.add((*base, "with", *field_loc), f"step '{step.id}': {message}")

    def check_template(
        self, loc: Loc, text: str, step_id: str, *, expression: bool = False
    ) -> None:
        try:
            analysis = analyse(text, expression=expression)
        except TemplateSyntaxError as exc:
            self.add(loc, f"step '{step_id}': template syntax error: {exc.message}")
            return
        if analysis.dynamic_secrets:
            self.add(
                loc, f"step '{step_id}': secret() takes a literal name, like secret('orders-dsn')"
            )
        for ref in analysis.references:
            message = self.reference_problem(ref, step_id)
            if message:
                self.add(loc, f"step '{step_id}': {message}")

    def reference_problem(self, ref: Reference, step_id: str) -> str | None:
        chain = ref.chain
        root = chain[0]
        if root not in ROOT_NAMES and root not in ENV.globals:
            hint = difflib.get_close_matches(root, sorted(ROOT_NAMES), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            return f"template uses unknown name '{root}'{extra}"
        if root == "params" and len(chain) > 1 and chain[1] not in self.rb.parameters:
            known = ", ".join(self.rb.parameters) or "none declared"
            return f"template uses unknown parameter '{chain[1]}' (parameters: {known})"
        if root == "steps" and len(chain) > 1:
            return self.step_reference_problem(chain, step_id)
        if root == "incident" and not self.rb.triggers:
            return "template uses 'incident' but the runbook has no triggers"
        if root == "incident" and len(chain) > 1 and chain[1] not in INCIDENT_FIELDS:
            return f"incident has no field '{chain[1]}' (fields: {', '.join(INCIDENT_FIELDS)})"
        if root == "run" and len(chain) > 1 and chain[1] not in RUN_ATTRIBUTES:
            return f"run has no attribute '{chain[1]}' (use {', '.join(RUN_ATTRIBUTES)})"
        return None

    def step_reference_problem(self, chain: tuple[str, ...], step_id: str) -> str | None:
        target = chain[1]
        if target not in self.deps:
            hint = difflib.get_close_matches(target, self.step_ids, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            return f"template uses unknown step '{target}'{extra}"
        if target == step_id or not self.ancestry.before(target, step_id):
            return (
                f"step '{step_id}' uses the result of step '{target}', which is not "
                f"guaranteed to run before it: add '{target}' to its needs"
            )
        if len(chain) > 2 and chain[2] not in STEP_ATTRIBUTES:
            return (
                f"steps.{target} has no attribute '{chain[2]}' (use {', '.join(STEP_ATTRIBUTES)})"
            )
        if len(chain) > 3 and chain[2] == "output":
            step_type = registry.get(self.rb.step(target).uses)
            if step_type is not None:
                fields = _closed_fields(step_type.output_model)
                if fields is not None and chain[3] not in fields:
                    return (
                        f"step '{target}' ({step_type.name}) has no output '{chain[3]}' "
                        f"(outputs: {', '.join(fields)})"
                    )
        return None

    def check_channels(self) -> None:
        from ktlo.notify import ChannelError, resolve_channels

        for event in ("on_failure", "on_success"):
            for j, target in enumerate(getattr(self.rb.notify, event)):
                try:
                    resolve_channels([target])
                except ChannelError as exc:
                    self.add(("notify", event, j), str(exc))


def _closed_fields(model: type[BaseModel]) -> list[str] | None:
    if model.model_config.get("extra") == "allow":
        return None
    return [f.alias or name for name, f in model.model_fields.items()]
