"""Baselines: which pending updates are approved (SSM's patch baselines, working on Debian too).

`min_age_days` counts from when ktlo first saw that version offered in a scan (any host), not
from a release date the repository may not carry.
"""

from __future__ import annotations

import fnmatch
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from tasks.patch.model import Update


class UpdateClass(StrEnum):
    SECURITY = "security"
    ALL = "all"


class Baseline(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: UpdateClass = Field(default=UpdateClass.ALL, description="security: only those")
    allow: list[str] = Field(default_factory=list, description="name globs; empty allows all")
    deny: list[str] = Field(
        default_factory=list, description="`name` or `name=version` globs never approved"
    )
    pins: dict[str, str] = Field(
        default_factory=dict, description="name -> the only version that may be installed"
    )
    min_age_days: float = Field(default=0, ge=0)

    def denies(self, name: str, version: str) -> bool:
        return any(
            fnmatch.fnmatchcase(f"{name}={version}" if "=" in pattern else name, pattern)
            for pattern in self.deny
        )

    def rejects_installed(self, name: str, version: str) -> bool:
        """An installed version a `name=version` deny entry names (InstalledRejected)."""
        pin = f"{name}={version}"
        return any(fnmatch.fnmatchcase(pin, p) for p in self.deny if "=" in p)

    def decide(
        self, update: Update, seen: dict[tuple[str, str, str], datetime], now: datetime
    ) -> tuple[Update | None, str]:
        """(the update to install, or None; why not)."""
        if self.denies(update.name, update.version):
            return None, "denied"
        if self.allow and not any(fnmatch.fnmatchcase(update.name, p) for p in self.allow):
            return None, "not in allow list"
        if self.classes is UpdateClass.SECURITY and not update.security:
            return None, "not a security update"
        pin = self.pins.get(update.name)
        if pin is not None and pin != update.version:
            if pin == update.current:
                return None, f"pinned to {pin}"
            update = update.model_copy(update={"version": pin})
        first = seen.get((update.provider, update.name, update.version))
        if self.min_age_days and (first is None or now - first < timedelta(days=self.min_age_days)):
            return None, f"seen less than {self.min_age_days:g} days ago"
        return update, ""

    def approve(
        self, pending: list[Update], seen: dict[tuple[str, str, str], datetime], now: datetime
    ) -> tuple[list[Update], dict[str, str]]:
        """The approved plan and, by `name=version`, why each other update was not approved."""
        approved: list[Update] = []
        rejected: dict[str, str] = {}
        for update in pending:
            chosen, why = self.decide(update, seen, now)
            if chosen is None:
                rejected[update.pin] = why
            else:
                approved.append(chosen)
        return approved, rejected
