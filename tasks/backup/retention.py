"""Retention with restic's `forget` semantics, as pure functions (property-tested).

For each rule with a count n (-1: unlimited), walking the backups newest first, a backup is
kept when its bucket (the backup itself for `last`; its hour, day, ISO week, month or year
otherwise) differs from the bucket of the previous backup that rule kept, until n backups
were kept by that rule. Like restic (since 0.14), the oldest backup is also kept by any rule
that still has count left when it is reached. An empty policy keeps everything.

On top of restic: the newest *verified* backup of a source is always kept, whatever the
policy says, so retention can never leave a source without a backup known to be good.
Buckets are computed in `tz` (default UTC).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
NEWEST_VERIFIED = "newest verified backup"


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_last: int | None = Field(default=None, ge=-1, description="the n newest backups")
    keep_hourly: int | None = Field(default=None, ge=-1, description="the newest per hour, n hours")
    keep_daily: int | None = Field(default=None, ge=-1, description="the newest per day, n days")
    keep_weekly: int | None = Field(default=None, ge=-1, description="per ISO week, n weeks")
    keep_monthly: int | None = Field(default=None, ge=-1, description="per month, n months")
    keep_yearly: int | None = Field(default=None, ge=-1, description="per year, n years")

    def counts(self) -> dict[str, int]:
        return {rule: getattr(self, f"keep_{rule}") or 0 for rule in RULES}

    @property
    def empty(self) -> bool:
        return not any(self.counts().values())


@dataclass(frozen=True)
class Snapshot:
    id: str
    created: datetime
    verified: bool = False


@dataclass
class Decision:
    keep: list[Snapshot] = field(default_factory=list)
    remove: list[Snapshot] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)


Bucket = Callable[[datetime, int], object]

BUCKETS: dict[str, Bucket] = {
    "last": lambda _t, nr: nr,
    "hourly": lambda t, _nr: (t.year, t.month, t.day, t.hour),
    "daily": lambda t, _nr: (t.year, t.month, t.day),
    "weekly": lambda t, _nr: tuple(t.isocalendar()[:2]),
    "monthly": lambda t, _nr: (t.year, t.month),
    "yearly": lambda t, _nr: t.year,
}


def newest_first(snapshots: Sequence[Snapshot]) -> list[Snapshot]:
    """Newest first; ties broken by id so the order (and so the decision) is deterministic."""
    return sorted(snapshots, key=lambda s: (s.created, s.id), reverse=True)


def apply_policy(snapshots: Sequence[Snapshot], policy: Policy, tz: str = "UTC") -> Decision:
    """restic's ApplyPolicy over the snapshots of one source."""
    ordered = newest_first(snapshots)
    decision = Decision()
    if policy.empty:
        decision.keep = ordered
        decision.reasons = {s.id: ["policy is empty"] for s in ordered}
        return decision
    zone = ZoneInfo(tz)
    left = policy.counts()
    last_bucket: dict[str, object] = {}
    for nr, snap in enumerate(ordered):
        local = snap.created.astimezone(zone)
        reasons: list[str] = []
        for rule in RULES:
            if left[rule] == 0:
                continue
            bucket = BUCKETS[rule](local, nr)
            if rule not in last_bucket or bucket != last_bucket[rule] or nr == len(ordered) - 1:
                last_bucket[rule] = bucket
                if left[rule] > 0:
                    left[rule] -= 1
                reasons.append(f"{rule} snapshot" if rule != "last" else "last snapshot")
        if reasons:
            decision.keep.append(snap)
            decision.reasons[snap.id] = reasons
        else:
            decision.remove.append(snap)
    return decision


def plan(snapshots: Sequence[Snapshot], policy: Policy, tz: str = "UTC") -> Decision:
    """The policy, then the guarantee: the newest verified backup is never removed."""
    decision = apply_policy(snapshots, policy, tz)
    verified = [s for s in newest_first(snapshots) if s.verified]
    if verified and verified[0] in decision.remove:
        guard = verified[0]
        decision.remove.remove(guard)
        decision.keep = newest_first([*decision.keep, guard])
        decision.reasons[guard.id] = [NEWEST_VERIFIED]
    elif verified:
        decision.reasons[verified[0].id].append(NEWEST_VERIFIED)
    return decision
