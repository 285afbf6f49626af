"""Runbook-time checks of a `health.sweep` step beyond its pydantic model.

Run by `ktlo validate` (and before any run): conditions are parsed against their check
type, check names are unique, `depends_on` names checks of the same sweep without cycles,
alert channels exist and `remediate` names a runbook. Each problem is located on its YAML
line, e.g. `("checks", 3, "conditions", 0)`.
"""

from __future__ import annotations

import difflib
import graphlib
from typing import Any

from ktlo.runbook.templating import is_template
from tasks.health.checks import CHECK_TYPES
from tasks.health.conditions import ConditionError, parse

Problems = list[tuple[tuple[str | int, ...], str]]


def validate_sweep(data: dict[str, Any], runbook: Any) -> Problems:
    checks = data.get("checks")
    if not isinstance(checks, list):
        return []
    items = [(i, c) for i, c in enumerate(checks) if isinstance(c, dict)]
    problems: Problems = []
    names: dict[str, int] = {}
    for i, c in items:
        name = c.get("name")
        if isinstance(name, str) and not is_template(name):
            if name in names:
                problems.append(
                    (
                        ("checks", i, "name"),
                        f"duplicate check name '{name}' (see check {names[name]})",
                    )
                )
            names.setdefault(name, i)
        problems += _conditions(i, c)
        problems += _channels(("checks", i, "alert"), c.get("alert"))
        problems += _remediate(i, c, runbook)
    defaults = data.get("defaults")
    if isinstance(defaults, dict):
        problems += _channels(("defaults", "alert"), defaults.get("alert"))
    problems += _dependencies(items, names)
    return problems


def _conditions(i: int, check: dict[str, Any]) -> Problems:
    kind = check.get("type")
    if kind not in CHECK_TYPES:
        return []  # the model reports the type
    problems: Problems = []
    for field in ("conditions", "warn"):
        texts = check.get(field)
        if not isinstance(texts, list):
            continue
        for j, text in enumerate(texts):
            if not isinstance(text, str) or is_template(text):
                continue
            try:
                parse(text, kind)
            except ConditionError as exc:
                problems.append((("checks", i, field, j), f"check '{check.get('name')}': {exc}"))
    return problems


def _channels(loc: tuple[str | int, ...], targets: Any) -> Problems:
    from ktlo.notify import ChannelError, resolve_channels

    if not isinstance(targets, list):
        return []
    problems: Problems = []
    for j, target in enumerate(targets):
        if isinstance(target, str) and not is_template(target):
            try:
                resolve_channels([target])
            except ChannelError as exc:
                problems.append(((*loc, j), str(exc)))
    return problems


def _remediate(i: int, check: dict[str, Any], runbook: Any) -> Problems:
    from ktlo.errors import KtloError
    from ktlo.runbook.loader import find_runbook

    name = check.get("remediate")
    if not isinstance(name, str) or is_template(name):
        return []
    loc: tuple[str | int, ...] = ("checks", i, "remediate")
    if name == getattr(runbook, "name", None):
        return [(loc, f"a check cannot remediate with its own runbook '{name}'")]
    path = getattr(runbook, "path", None)
    try:
        find_runbook(name, path.parent if path else None)
    except KtloError as exc:
        return [(loc, f"remediate: {str(exc).splitlines()[0]}")]
    return []


def _dependencies(items: list[tuple[int, dict[str, Any]]], names: dict[str, int]) -> Problems:
    problems: Problems = []
    graph: dict[str, list[str]] = {}
    for i, c in items:
        deps = c.get("depends_on")
        name = c.get("name")
        if not isinstance(deps, list) or not isinstance(name, str):
            continue
        for j, dep in enumerate(deps):
            if not isinstance(dep, str) or is_template(dep):
                continue
            if dep == name:
                problems.append(
                    (("checks", i, "depends_on", j), f"check '{name}' depends on itself")
                )
            elif dep not in names:
                hint = difflib.get_close_matches(dep, list(names), n=1)
                extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                problems.append(
                    (
                        ("checks", i, "depends_on", j),
                        f"check '{name}' depends on unknown check '{dep}'{extra}; "
                        "depends_on names checks of the same sweep",
                    )
                )
            else:
                graph.setdefault(name, []).append(dep)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        first = names.get(cycle[0], 0)
        problems.append((("checks", first, "depends_on"), "dependency cycle: " + " → ".join(cycle)))
    return problems
