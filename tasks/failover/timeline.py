"""The evidence of one failover: what happened when, relative to the failure being observed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any


class Event(StrEnum):
    FAILURE_OBSERVED = "failure_observed"
    DECIDED = "decided"
    FENCED = "fenced"
    PROMOTED = "promoted"
    ROUTED = "routed"
    FIRST_WRITE_ACKNOWLEDGED = "first_write_acknowledged"
    SPLIT_BRAIN_FENCED = "split_brain_fenced"
    REFUSED = "refused"


@dataclass
class Timeline:
    """Events on the monotonic clock, reported as offsets from the first one and as UTC."""

    events: list[tuple[str, float, str]] = field(default_factory=list)
    _mono0: float | None = None
    _wall0: datetime | None = None

    def mark(self, event: Event, at: float | None = None, detail: str = "") -> None:
        at = time.monotonic() if at is None else at
        if self._mono0 is None:
            self._mono0, self._wall0 = (
                at,
                datetime.now(UTC) - timedelta(seconds=time.monotonic() - at),
            )
        self.events.append((str(event), at, detail))

    def as_list(self) -> list[dict[str, Any]]:
        assert self._mono0 is not None or not self.events
        out = []
        for name, at, detail in self.events:
            offset = at - (self._mono0 or at)
            wall = (self._wall0 or datetime.now(UTC)) + timedelta(seconds=offset)
            out.append(
                {"event": name, "t_s": round(offset, 3), "at": wall.isoformat(), "detail": detail}
            )
        return out

    def seconds(self, event: Event) -> float | None:
        for name, at, _ in self.events:
            if name == event:
                return round(at - (self._mono0 or at), 3)
        return None
