"""Problems in YAML documents: pydantic errors mapped onto the lines that caused them.

Shared by the runbook loader and validation (and by any domain that loads YAML of its own:
DR plans, inventories, cluster files), so every file error reads `path:line: message`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from ktlo.errors import Problem
from ktlo.runbook.yamlsrc import MISSING, Loc, Source, child


def describe_loc(data: Any, loc: Sequence[str | int]) -> str:
    """A readable location: `step 'dump': with.dsn` rather than `steps.3.with.dsn`."""
    parts = list(loc)
    prefix = ""
    if len(parts) >= 2 and parts[0] == "steps" and isinstance(parts[1], int):
        steps = data.get("steps") if isinstance(data, dict) else None
        if isinstance(steps, list) and parts[1] < len(steps) and isinstance(steps[parts[1]], dict):
            step_id = steps[parts[1]].get("id")
            if step_id:
                prefix = f"step '{step_id}'"
                parts = parts[2:]
    text = ".".join(str(p) for p in parts)
    if prefix:
        return f"{prefix}: {text}" if text else prefix
    return text


def data_loc(data: Any, loc: Sequence[str | int]) -> Loc:
    """The part of a pydantic error location that exists in the YAML data (drops union tags)."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(part, int) and isinstance(node, dict):
            continue  # a single mapping given where a list is accepted (`schedule:`)
        found = child(node, part)
        if found is MISSING:
            if isinstance(node, dict | list):
                out.append(part)  # a missing or unknown key: still worth naming
            break
        node = found
        out.append(part)
    return tuple(out)


def pydantic_problems(
    source: Source,
    exc: ValidationError,
    model: type[BaseModel],
    base: Loc = (),
    skip: Callable[[Loc], bool] | None = None,
) -> list[Problem]:
    """Map a pydantic error list onto YAML lines; `skip` drops errors at templated values."""
    problems: list[Problem] = []
    seen: set[Loc] = set()
    root = source.data
    for err in exc.errors():
        if skip is not None and skip(tuple(err["loc"])):
            continue
        loc = data_loc(root, (*base, *err["loc"]))
        if loc in seen:
            continue
        seen.add(loc)
        allowed = allowed_keys(model, tuple(err["loc"]))
        problems.append(source.problem(loc, error_message(root, loc, err, allowed)))
    return problems


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def allowed_keys(model: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the model accepts where an unknown key `loc[-1]` was found."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        if part in fields:
            current = _submodel(fields[part].annotation)
    if current is None:
        return []
    return [f.alias or n for n, f in current.model_fields.items()]


def error_message(root: Any, loc: Loc, err: Any, allowed: Sequence[str] = ()) -> str:
    where = describe_loc(root, loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        *parent, key = loc if loc else ("",)
        hint = ""
        if allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        container = describe_loc(root, tuple(parent))
        return f"{container + ': ' if container else ''}unknown key '{key}'{hint}"
    if kind == "missing":
        return f"{where}: required" if where else "required"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{where}: {msg}" if where else msg
