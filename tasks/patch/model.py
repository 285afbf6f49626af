"""What a scan finds and what a rollout decides: packages, plans, outcomes, compliance states."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Compliance(StrEnum):
    """SSM Patch Manager's seven states (SPEC §10), one per host."""

    INSTALLED = "Installed"
    INSTALLED_OTHER = "InstalledOther"
    INSTALLED_PENDING_REBOOT = "InstalledPendingReboot"
    INSTALLED_REJECTED = "InstalledRejected"
    MISSING = "Missing"
    FAILED = "Failed"
    NOT_APPLICABLE = "NotApplicable"


class Outcome(StrEnum):
    """A host's outcome in one rollout (SPEC §10)."""

    PATCHED = "patched"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SKIPPED = "skipped"
    NOT_STARTED = "not_started"


class Update(BaseModel):
    """One pending update: `name` at `current` can go to `version`."""

    model_config = ConfigDict(frozen=True)

    provider: str
    name: str
    current: str | None = None
    version: str
    security: bool = False
    origin: str = ""
    advisories: list[str] = Field(default_factory=list)

    @property
    def pin(self) -> str:
        return f"{self.name}={self.version}"


class ProviderScan(BaseModel):
    """One provider's view of a host: installed versions and pending updates."""

    provider: str
    applicable: bool = True
    installed: dict[str, str] = Field(default_factory=dict)
    pending: list[Update] = Field(default_factory=list)
    error: str | None = None
    fingerprint: str = Field(
        default="", description="of what the plan was computed from; empty: not known"
    )
    unchanged: bool = Field(
        default=False, description="the fingerprint is the last scan's: its result still holds"
    )


def plan_hash(updates: list[Update]) -> str:
    """A stable hash of what would be installed: it changes when the host's pending set does."""
    items = sorted(f"{u.provider}:{u.name}={u.version}" for u in updates)
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
