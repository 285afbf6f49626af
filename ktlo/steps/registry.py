"""The step registry: the one place a step type (`uses:`) is bound to its models and task.

A `tasks/` module declares a step type with `@step_task`, which builds the Prefect task (so
the same task can be reused in hand-written flows) and registers it:

    @step_task("shell", ShellInput, ShellOutput)
    async def shell(inputs: ShellInput) -> ShellOutput: ...

Step types are discovered through the `ktlo.steps` entry-point group (see pyproject.toml).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from ktlo import secrets
from ktlo.errors import KtloError, StepFailed
from ktlo.steps.context import get_step_context
from ktlo.steps.renderings import Rendering

ENTRY_POINT_GROUP = "ktlo.steps"


class StepInput(BaseModel):
    """Base of every step input model: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def renderings(cls, raw: Mapping[str, Any]) -> Mapping[str, Rendering]:
        """How `with:` fields are rendered when a plain value is not safe (ktlo.steps.renderings).

        `raw` is the step's `with:` as written, so the choice may depend on another literal
        field (a shell command is shell source only with `shell: true`).
        """
        return {}


class StepOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")


Validator = Callable[[dict[str, Any], Any], Sequence[tuple[tuple[str | int, ...], str]]]
Summary = Callable[[Any], str]


@dataclass(frozen=True)
class StepType:
    name: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    task: Any  # prefect.Task; typed loosely to keep the core import-light
    description: str = ""
    summarize: Summary | None = None
    validate: Validator | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def renderings(step_type: StepType, raw: Any) -> Mapping[str, Rendering]:
    """The renderings a step type declares for these raw inputs (none for other models)."""
    model = step_type.input_model
    if isinstance(raw, dict) and issubclass(model, StepInput):
        return model.renderings(raw)
    return {}


_TYPES: dict[str, StepType] = {}
_loaded = False


def register(step_type: StepType) -> StepType:
    existing = _TYPES.get(step_type.name)
    if existing is not None and _origin(existing) != _origin(step_type):
        raise KtloError(
            f"step type '{step_type.name}' is registered by both {_origin(existing)} and {_origin(step_type)}"
        )
    _TYPES[step_type.name] = step_type
    return step_type


def _origin(step_type: StepType) -> str:
    fn = getattr(step_type.task, "fn", step_type.task)
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"


def get(name: str) -> StepType | None:
    """The step type `name`; plugins' deferred types are loaded only when it is not found."""
    load_plugins(complete=False)
    found = _TYPES.get(name)
    if found is None and _deferred:
        load_plugins()
        found = _TYPES.get(name)
    return found


def all_types() -> dict[str, StepType]:
    load_plugins()
    return dict(sorted(_TYPES.items()))


_deferred: list[Callable[[], object]] = []


def load_plugins(*, complete: bool = True) -> None:
    """Import every module named in the `ktlo.steps` entry-point group (once).

    A plugin module may define `load_deferred()`: the step types that pull in heavy
    libraries (SSH, database drivers, cloud SDKs). It runs with `complete`, or when a runbook
    uses a type not registered yet, so `ktlo run` of basic steps does not pay for them.
    """
    global _loaded
    if not _loaded:
        _loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            module = importlib.import_module(ep.value.split(":")[0])
            deferred = getattr(module, "load_deferred", None)
            if callable(deferred):
                _deferred.append(deferred)
    while complete and _deferred:
        _deferred.pop(0)()


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _scrubbed(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Count attempts and re-raise failures with secrets removed and no chained context.

    Prefect stores a failed task's exception text in the task-run state; the text must not
    carry secret values, and the chained traceback must not either.
    """

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = get_step_context()
        if ctx is not None:
            ctx.attempts += 1
        try:
            return await fn(*args, **kwargs)
        except StepFailed as exc:
            raise StepFailed(secrets.redact(str(exc))) from None
        except KtloError as exc:
            raise StepFailed(secrets.redact(str(exc))) from None
        except TimeoutError:
            raise
        except Exception as exc:
            detail = str(exc) or type(exc).__name__
            raise StepFailed(secrets.redact(f"{type(exc).__name__}: {detail}")) from None

    return wrapper


def step_task(
    name: str,
    input_model: type[BaseModel],
    output_model: type[BaseModel],
    *,
    summarize: Summary | None = None,
    validate: Validator | None = None,
    **task_options: Any,
) -> Callable[[F], Any]:
    """Make `fn` a Prefect task and register it as step type `name`."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    def decorate(fn: F) -> Any:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"step task {name} must be async (timeouts need cancellation)")
        options: dict[str, Any] = {"name": name, "cache_policy": NO_CACHE, "persist_result": False}
        options.update(task_options)
        prefect_task = task(**options)(_scrubbed(fn))
        register(
            StepType(
                name=name,
                input_model=input_model,
                output_model=output_model,
                task=prefect_task,
                description=(inspect.getdoc(fn) or "").split("\n\n")[0],
                summarize=summarize,
                validate=validate,
            )
        )
        return prefect_task

    return decorate
