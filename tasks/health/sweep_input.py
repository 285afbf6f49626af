"""The `health.sweep` step's input: checks (a union of every registered check type) and
the sweep's own settings. Unknown keys are errors, located on the YAML (`input_errors`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, ValidationError, WrapValidator, model_validator

from ktlo.steps.registry import StepInput
from tasks.health.checks import CHECK_TYPES, CheckBase, CheckSettings
from tasks.health.input_errors import relocated, relocated_defaults

if TYPE_CHECKING:
    Check = CheckBase
else:
    Check = Annotated[
        Union[tuple(CHECK_TYPES.values())],  # noqa: UP007 (X | Y cannot splat the registry)
        Field(discriminator="type"),
        WrapValidator(relocated),
    ]


class SweepInput(StepInput):
    checks: list[Check] = Field(min_length=1)
    concurrency: int = Field(default=100, ge=1, le=2000, description="probes in flight at once")
    connections_per_host: int = Field(
        default=10, ge=1, le=200, description="HTTP connections kept open to one origin"
    )
    defaults: Annotated[CheckSettings | None, WrapValidator(relocated_defaults)] = Field(
        default=None, description="common fields applied to every check that does not set them"
    )
    fail_on_failure: bool = Field(
        default=False, description="fail the step when a check's critical conditions fail"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("defaults"), dict):
            return data
        try:
            CheckSettings.model_validate(data["defaults"])
        except ValidationError:
            return data  # reported at `defaults`, not repeated at every check
        defaults = dict(data["defaults"])
        checks = data.get("checks")
        if isinstance(checks, list):
            checks = [{**defaults, **c} if isinstance(c, dict) else c for c in checks]
        return {**data, "checks": checks}
