"""Validation errors of a `health.sweep` input, located on the YAML the operator wrote.

pydantic puts a discriminated union's tag in an error's location (`checks.2.http.url`),
which is not a key of the runbook: the tag is dropped, and tells which model the rest of
the location belongs to, so an unknown key can be answered with the keys that model takes.
"""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError, ValidatorFunctionWrapHandler
from pydantic_core import PydanticCustomError

from tasks.health.checks import CHECK_TYPES, CheckBase, CheckSettings
from tasks.health.conditions import article
from tasks.health.windows import WINDOW_TAGS

# Union tags: check types, and the kinds of maintenance window.
TAGGED: dict[str, type[BaseModel]] = {**CHECK_TYPES, **WINDOW_TAGS}


def relocated(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate a check, then drop union tags from error locations and explain them."""
    return _validate(value, handler, None)


def relocated_defaults(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate a sweep's `defaults` the same way (unknown keys: those of `CheckSettings`)."""
    return _validate(value, handler, CheckSettings)


def _validate(
    value: Any, handler: ValidatorFunctionWrapHandler, model: type[BaseModel] | None
) -> Any:
    try:
        return handler(value)
    except ValidationError as exc:
        errors = [_relocate(value, err, model) for err in exc.errors()]
        raise ValidationError.from_exception_data(exc.title, errors) from None  # type: ignore[arg-type]


def _relocate(data: Any, err: Any, model: type[BaseModel] | None) -> dict[str, Any]:
    """One error, located on the data the operator wrote (tags removed, messages explained)."""
    loc: list[str | int] = []
    node = data
    for part in err["loc"]:
        at_union = not loc or (
            len(loc) >= 2 and loc[-2] == "maintenance" and isinstance(loc[-1], int)
        )
        if at_union and isinstance(part, str) and part in TAGGED and model is not TAGGED[part]:
            model = TAGGED[part]  # a union tag: tells which model, is not a key
            continue
        loc.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    kind, message = err["type"], err["msg"]
    if kind == "extra_forbidden" and loc:
        keys = [f.alias or n for n, f in (model or CheckBase).model_fields.items()]
        hint = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        kind = "unknown_key"
        message = f"unknown key for {_what(model)}" + (
            f" (did you mean '{hint[0]}'?)" if hint else f" (keys: {', '.join(keys)})"
        )
    elif kind == "union_tag_invalid":
        tag = str((err.get("ctx") or {}).get("tag", ""))
        hint = difflib.get_close_matches(tag, list(CHECK_TYPES), n=1)
        kind, loc = "unknown_check_type", [*loc, "type"]
        message = f"unknown check type '{tag}'" + (
            f" (did you mean '{hint[0]}'?)" if hint else f" (types: {', '.join(CHECK_TYPES)})"
        )
    elif kind == "union_tag_not_found":
        kind, loc = "missing_check_type", [*loc, "type"]
        message = f"required: the check type ({', '.join(CHECK_TYPES)})"
    return {
        "type": PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}")),
        "loc": tuple(loc),
        "input": err.get("input"),
    }


def _what(model: type[BaseModel] | None) -> str:
    if model is None:
        return "a check"
    if model is CheckSettings:
        return "defaults"
    if model in WINDOW_TAGS.values():
        return "a maintenance window"
    kind = next((k for k, v in CHECK_TYPES.items() if v is model), "?")
    return f"{article(kind)} {kind} check"
