"""One Prefect flow per runbook, with the runbook's parameters as its typed signature.

Deployments point at `flows/catalog.py:<runbook name with _ for ->`. Prefect derives a
deployment's parameter schema (the UI's *Custom run* form) from the flow's signature, also
in `prefect deploy`, so each runbook gets a flow whose signature is built from its declared
parameters: names, types, defaults, bounds, enum choices and descriptions. Every such flow is
named `runbook` and runs through `flows.runbook.execute_runbook`, like `ktlo run`.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

from prefect import Flow, flow

from flows.runbook import END_HOOKS, FLOW_NAME, execute_runbook
from ktlo.orchestration.deployments import attribute_name
from ktlo.runbook.loader import load_all
from ktlo.runbook.model import Runbook
from ktlo.runbook.params import field_spec

_cache: dict[str, tuple[str, Flow[Any, Any]]] = {}


def _signature(rb: Runbook) -> inspect.Signature:
    params = []
    for name, spec in rb.parameters.items():
        py_type, info = field_spec(spec)
        default = inspect.Parameter.empty if spec.is_required else spec.default
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[py_type, info],
            )
        )
    if rb.triggers:
        params.append(
            inspect.Parameter(
                "incident",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=dict[str, Any] | None,
            )
        )
    return inspect.Signature(params)


def _docstring(rb: Runbook) -> str:
    lines = [rb.description.strip() or f"ktlo runbook {rb.name}", "", "Args:"]
    for name, spec in rb.parameters.items():
        lines.append(f"    {name}: {(spec.description or name).strip()}")
    if rb.triggers:
        lines.append("    incident: the incident that triggered this run (filled in by ktlo)")
    return "\n".join(lines)


def build_flow(rb: Runbook) -> Flow[Any, Any]:
    name = rb.name

    async def run(**kwargs: Any) -> Any:
        incident = kwargs.pop("incident", None)
        return await execute_runbook(name, kwargs, incident)

    signature = _signature(rb)
    run.__signature__ = signature  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    run.__name__ = run.__qualname__ = attribute_name(name)
    run.__doc__ = _docstring(rb)
    run.__module__ = __name__
    run.__ktlo_runbook__ = name  # type: ignore[attr-defined]

    return flow(
        name=FLOW_NAME,
        description=rb.description or None,
        validate_parameters=False,  # execute_runbook validates, records and explains
        **END_HOOKS,
    )(run)


def flow_for(rb: Runbook) -> Flow[Any, Any]:
    """The flow of a loaded runbook, rebuilt when the runbook file changes."""
    key = rb.source.path if rb.source else rb.name
    text = repr(rb.model_dump())
    cached = _cache.get(key)
    if cached is None or cached[0] != text:
        cached = (text, build_flow(rb))
        _cache[key] = cached
    return cached[1]


def __getattr__(attr: str) -> Flow[Any, Any]:
    if attr.startswith("__"):
        raise AttributeError(attr)
    runbooks, _problems = load_all()
    for rb in runbooks:
        if attribute_name(rb.name) == attr:
            return flow_for(rb)
    raise AttributeError(f"no valid runbook provides flow {attr!r}")
