"""Maintenance windows: recurring (`cron` + `duration_s`, in a time zone) or fixed (`start`/`end`).

Inside a window a check is still probed and its state still recorded, but no notification
is sent and no remediation is started: the people doing the maintenance know.
"""

from __future__ import annotations

from abc import abstractmethod
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from ktlo.fields import TimeZone


class _Window(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timezone: TimeZone = Field(default="UTC", description="for cron, and for start/end without one")
    description: str | None = None

    def label(self) -> str:
        return self.description or self.describe()

    @abstractmethod
    def describe(self) -> str:
        """The window in words, for notices and `ktlo status`."""

    @abstractmethod
    def active_until(self, now: datetime) -> datetime | None:
        """The end of the window `now` is in, or None when it is in none."""


class CronWindow(_Window):
    """Every time `cron` fires (in `timezone`), for `duration_s` seconds."""

    cron: str
    duration_s: float = Field(gt=0)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        return value

    def describe(self) -> str:
        return f"cron '{self.cron}' for {self.duration_s:g}s ({self.timezone})"

    def active_until(self, now: datetime) -> datetime | None:
        local = now.astimezone(ZoneInfo(self.timezone))
        duration = timedelta(seconds=self.duration_s)
        try:
            fired = next(CronSim(self.cron, local - duration))  # first firing after the start
        except (StopIteration, CronSimError):
            return None
        return (fired + duration).astimezone(UTC) if fired <= local else None


class FixedWindow(_Window):
    """Once, from `start` to `end` (ISO 8601; without an offset, in `timezone`)."""

    start: datetime
    end: datetime

    def _aware(self, value: datetime) -> datetime:
        if value.tzinfo is None:
            value = value.replace(tzinfo=ZoneInfo(self.timezone))
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _ordered(self) -> FixedWindow:
        if self._aware(self.end) <= self._aware(self.start):
            raise ValueError("end must be after start")
        return self

    def describe(self) -> str:
        return f"{self._aware(self.start):%Y-%m-%d %H:%M} to {self._aware(self.end):%Y-%m-%d %H:%M} UTC"

    def active_until(self, now: datetime) -> datetime | None:
        start, end = self._aware(self.start), self._aware(self.end)
        return end if start <= now < end else None


def _window_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "cron" if "cron" in value else "fixed"
    return "cron" if isinstance(value, CronWindow) else "fixed"


Window = Annotated[
    Annotated[CronWindow, Tag("cron")] | Annotated[FixedWindow, Tag("fixed")],
    Discriminator(_window_kind),
]
WINDOW_TAGS: dict[str, type[_Window]] = {"cron": CronWindow, "fixed": FixedWindow}


def active_window(windows: list[CronWindow | FixedWindow], now: datetime) -> str | None:
    """A description of the window `now` falls in (and until when), or None."""
    for window in windows:
        until = window.active_until(now)
        if until is not None:
            return f"maintenance window ({window.label()}) until {until:%Y-%m-%d %H:%M} UTC"
    return None
