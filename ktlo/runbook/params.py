"""Runbook parameters as a pydantic model: one definition for the CLI, the engine and the UI form."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ktlo.errors import KtloError
from ktlo.runbook.model import Parameter, Runbook

_PY_TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "number": float,
    "boolean": bool,
    "array": list[Any],
    "object": dict[str, Any],
}


class ParameterError(KtloError):
    pass


def field_spec(spec: Parameter) -> tuple[Any, Any]:
    """The Python type and pydantic FieldInfo of one declared parameter."""
    py_type: Any = _PY_TYPES[spec.type]
    if spec.enum:
        py_type = Literal[tuple(spec.enum)]
    constraints: dict[str, Any] = {}
    number = int if spec.type == "integer" else float
    if spec.minimum is not None:
        constraints["ge"] = number(spec.minimum)
    if spec.maximum is not None:
        constraints["le"] = number(spec.maximum)
    if spec.pattern is not None:
        constraints["pattern"] = spec.pattern
    default = ... if spec.is_required else spec.default
    if default is None and not spec.is_required:
        py_type = py_type | None
    return py_type, Field(
        default=default, description=spec.description, title=spec.title, **constraints
    )


def params_model(runbook: Runbook) -> type[BaseModel]:
    fields = {name: field_spec(spec) for name, spec in runbook.parameters.items()}
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        f"Params_{runbook.name.replace('-', '_')}",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    model.__doc__ = runbook.description or None
    return model


def validate_params(runbook: Runbook, values: dict[str, Any]) -> dict[str, Any]:
    """Typed, defaulted parameters, or a `ParameterError` that names each bad parameter."""
    try:
        return params_model(runbook).model_validate(values).model_dump()
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "parameters"
            if err["type"] == "extra_forbidden":
                known = ", ".join(runbook.parameters) or "none"
                messages.append(f"unknown parameter '{name}' (known: {known})")
            elif err["type"] == "missing":
                messages.append(f"parameter '{name}' is required")
            else:
                messages.append(f"parameter '{name}': {err['msg']}")
        raise ParameterError(f"runbook {runbook.name}: " + "; ".join(messages)) from None


def parse_cli_params(runbook: Runbook, pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings → raw values typed by the runbook's parameter declarations."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParameterError(f"--param {pair!r}: expected key=value")
        spec = runbook.parameters.get(key)
        if spec is not None and spec.type in ("array", "object"):
            try:
                values[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                # `a,b` is a list of words; text that starts as JSON must be JSON (`[1,2`
                # silently became ["[1", "2"])
                if spec.type == "array" and not raw.lstrip().startswith(("[", "{", '"')):
                    values[key] = [v.strip() for v in raw.split(",") if v.strip()]
                elif spec.type == "array":
                    raise ParameterError(
                        f"--param {key}: malformed JSON array ({exc.msg}, character "
                        f"{exc.pos + 1}); or give words separated by commas: a,b,c"
                    ) from None
                else:
                    raise ParameterError(f"--param {key}: expected a JSON object") from None
        else:
            values[key] = raw
    return values


def json_schema(runbook: Runbook) -> dict[str, Any]:
    """The deployment's parameter schema, so the Prefect UI renders a typed form."""
    schema = params_model(runbook).model_json_schema()
    schema["title"] = "Parameters"
    for i, name in enumerate(runbook.parameters):
        schema.get("properties", {}).get(name, {}).setdefault("position", i)
    return schema
