"""The runbook format (SPEC §4) as pydantic models: what an operator writes in runbooks/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ktlo.fields import TimeZone
from ktlo.runbook.yamlsrc import Source

SLUG = r"^[a-z0-9][a-z0-9_-]*$"
IDENT = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESERVED_PARAMS = frozenset({"runbook", "incident"})

Slug = Annotated[str, Field(pattern=SLUG, max_length=63)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


ParamType = Literal["string", "integer", "number", "boolean", "array", "object"]


class Parameter(Model):
    """A runbook parameter: a field of the deployment's run form and a `--param` option."""

    type: ParamType = "string"
    default: Any = None
    description: str | None = None
    enum: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    pattern: str | None = None
    required: bool | None = None
    title: str | None = None

    @property
    def is_required(self) -> bool:
        if self.required is not None:
            return self.required
        return "default" not in self.model_fields_set


class Schedule(Model):
    """When a runbook runs by itself: a cron expression or a fixed interval."""

    cron: str | None = None
    interval_s: float | None = Field(default=None, gt=0)
    timezone: TimeZone = "UTC"
    active: bool = True

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("give exactly one of 'cron' or 'interval_s'")
        return self

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from datetime import datetime

            from cronsim import CronSim, CronSimError

            try:
                CronSim(value, datetime(2000, 1, 1))
            except CronSimError as exc:
                raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        return value


TriggerSource = Literal["alertmanager", "grafana", "pagerduty", "generic", "any"]


class Trigger(Model):
    """Incidents that start this runbook: every `match` entry must equal (or `~regex` match)."""

    source: TriggerSource = "any"
    match: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("match")
    @classmethod
    def _regexes(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, pattern in value.items():
            if isinstance(pattern, str) and pattern.startswith("~"):
                try:
                    re.compile(pattern[1:])
                except re.error as exc:
                    raise ValueError(f"match.{key}: invalid regular expression: {exc}") from None
        return value


class Notify(Model):
    on_failure: list[str] = Field(default_factory=list)
    on_success: list[str] = Field(default_factory=list)


class Step(Model):
    """One step: a registered step type with its inputs and how failures are handled."""

    id: Slug
    uses: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    needs: list[str] | None = None
    if_: str | bool | None = Field(default=None, alias="if")
    retries: int = Field(default=0, ge=0, le=100)
    retry_delay_s: float = Field(default=0, ge=0)
    timeout_s: float | None = Field(default=None, gt=0)
    on_failure: Literal["abort", "continue"] = "abort"
    description: str | None = None


class Runbook(Model):
    name: Slug
    description: str = ""
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    schedule: list[Schedule] = Field(default_factory=list)
    triggers: list[Trigger] = Field(default_factory=list)
    notify: Notify = Field(default_factory=Notify)
    tags: list[str] = Field(default_factory=list)
    concurrency: int | None = Field(
        default=None, ge=1, description="at most this many runs at once, across all workers"
    )
    retry_crashed: int = Field(
        default=0, ge=0, le=10, description="start a new run when a run's process died"
    )
    steps: list[Step] = Field(min_length=1)

    _source: Source | None = PrivateAttr(default=None)

    @field_validator("schedule", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """`schedule:` takes one schedule or a list of them."""
        if value is None:
            return []
        return [value] if isinstance(value, dict) else value

    @field_validator("parameters")
    @classmethod
    def _param_names(cls, value: dict[str, Parameter]) -> dict[str, Parameter]:
        for name in value:
            if not re.match(IDENT, name):
                raise ValueError(f"parameter name {name!r} must be an identifier")
            if name in RESERVED_PARAMS:
                raise ValueError(f"parameter name {name!r} is reserved")
        return value

    @property
    def schedules(self) -> list[Schedule]:
        return self.schedule

    @property
    def source(self) -> Source | None:
        return self._source

    @property
    def path(self) -> Path | None:
        return Path(self._source.path) if self._source else None

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def dependencies(self) -> dict[str, list[str]]:
        """DAG edges: explicit `needs`, else the previous step in file order."""
        deps: dict[str, list[str]] = {}
        previous: str | None = None
        for s in self.steps:
            if s.needs is not None:
                deps[s.id] = list(s.needs)
            else:
                deps[s.id] = [previous] if previous else []
            previous = s.id
        return deps
