"""What every check type shares, and the one registry of check types.

A check type is a subclass of `CheckBase` with a `type: Literal["<name>"]` field: defining
the class registers it (`CHECK_TYPES`), and the sweep's input union, condition validation
and probing are all built from that registry. Besides its fields, a type declares:

- `PLACEHOLDERS`: the facts its probe records, which is what its conditions may name;
- `DEFAULT_CONDITIONS`: the critical conditions used when a check sets none;
- `target()`: where it looks, without credentials (shown in results and notifications);
- `probe()`: observe the target once and record facts; and, for a probe that needs a shared
  resource before its slot and timeout start (HTTP: a client of its origin), `hold()`.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from tasks.health.windows import Window

if TYPE_CHECKING:
    from tasks.health.prober import Prober

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.:/@-]*$"

# What a placeholder holds. "text" is a string that may also be read as JSON with a path
# (`body.status`); "map" needs a key (`headers.server`).
PlaceholderKind = Literal["number", "bool", "string", "list", "any", "text", "map"]
Placeholders = dict[str, PlaceholderKind]
# The facts of every probe that connects to something.
CONNECTION: Placeholders = {"connected": "bool", "response_time_ms": "number"}

Facts = dict[str, Any]

_NOTHING_HELD = contextlib.nullcontext()

# Type name → model, in the order types are defined (see tasks.health.checks).
CHECK_TYPES: dict[str, type[CheckBase]] = {}


class CheckSettings(BaseModel):
    """Fields every check has (and `defaults:` may set for all checks of a sweep)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    timeout_s: float = Field(default=10, gt=0, le=600, description="the probe's time budget")
    failure_threshold: int = Field(default=3, ge=1, description="failures in a row → FAILING")
    success_threshold: int = Field(default=2, ge=1, description="successes in a row → OK")
    remind_every_s: float | None = Field(default=None, gt=0, description="reminders while FAILING")
    send_on_resolved: bool = True
    alert: list[str] = Field(default_factory=list, description="apprise URLs or channel names")
    maintenance: list[Window] = Field(default_factory=list)


class CheckBase(CheckSettings):
    """The fields of every check and the hooks of a check type (see the module docstring)."""

    name: str = Field(pattern=NAME_PATTERN, max_length=200)
    description: str | None = None
    conditions: list[str] = Field(
        default_factory=list, description="critical: any failing → the check fails"
    )
    warn: list[str] = Field(
        default_factory=list, description="warnings: only these failing → DEGRADED"
    )
    depends_on: list[str] = Field(default_factory=list, description="checks of the same sweep")
    remediate: str | None = Field(
        default=None, description="runbook started (once) when the check goes FAILING"
    )

    PLACEHOLDERS: ClassVar[Placeholders]
    DEFAULT_CONDITIONS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("type")
        if field is None or get_origin(field.annotation) is not Literal:
            return  # a base shared by several types, not a type of its own
        (name,) = get_args(field.annotation)
        if not getattr(cls, "PLACEHOLDERS", None):
            raise TypeError(f"check type {name!r} ({cls.__qualname__}) declares no PLACEHOLDERS")
        other = CHECK_TYPES.setdefault(name, cls)
        if other is not cls:
            raise TypeError(f"check type {name!r} is defined twice: {other} and {cls}")

    def critical(self) -> list[str]:
        return self.conditions or list(self.DEFAULT_CONDITIONS)

    @abstractmethod
    def target(self) -> str:
        """Where the check looks, without credentials (shown in results and notifications)."""

    @abstractmethod
    async def probe(self, prober: Prober, facts: Facts) -> None:
        """Observe the target once, recording facts as they are learnt.

        Runs on the sweep's event loop within the check's timeout; blocking calls go through
        `prober.blocking`. Facts recorded before an exception are kept (`connected: true`,
        then a query that fails), so record them as soon as they are known.
        """

    def hold(self, prober: Prober) -> AbstractAsyncContextManager[object]:
        """What the probe holds from before its slot until it ends (by default nothing)."""
        return _NOTHING_HELD


def strip_credentials(url: str) -> str:
    """A URL without its user info or query (a check's `target`)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url.split("@")[-1]
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
