"""A package provider: how to list installed and pending updates on a host, and install them.

Each provider builds shell commands and parses their output; the hosts runner runs them (over
SSH with the host's env, under a timeout). Scan commands change nothing on the host.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict

from ktlo.errors import KtloError
from ktlo.hosts.inventory import Host
from tasks.patch.model import ProviderScan, Update

PLAN_CHANGED = "@@ktlo-plan-changed@@"
PLAN_CHANGED_EXIT = 97
PLACEHOLDER = re.compile(r"\{(host|vars\.[A-Za-z_][A-Za-z0-9_]*)\}")


def for_host(text: str, host: Host) -> str:
    """`{host}` and `{vars.NAME}` replaced by the host's name and variables."""

    def one(m: re.Match[str]) -> str:
        key = m.group(1)
        if key == "host":
            return host.name
        name = key.split(".", 1)[1]
        if name not in host.vars:
            raise KtloError(f"host {host.name} has no variable {name!r} (used as {m.group(0)})")
        return str(host.vars[name])

    return PLACEHOLDER.sub(one, text)


class ProviderBase(BaseModel, ABC):
    """A provider's configuration (`providers:` in a patch step); `kind` selects the class."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    KIND: ClassVar[str]

    @abstractmethod
    def scan_command(self) -> str:
        """A read-only shell command whose output `parse_scan` reads."""

    @abstractmethod
    def parse_scan(self, stdout: str) -> ProviderScan:
        """Installed versions and pending updates from `scan_command`'s output."""

    @abstractmethod
    def install_command(self, updates: list[Update]) -> str:
        """Install exactly these versions (non-interactive)."""

    def guarded_install_command(
        self, pending: list[Update], approved: list[Update], fingerprint: str = ""
    ) -> str | None:
        """Install `approved` only if the host's pending updates are still exactly `pending`.

        One remote exec instead of a rescan and an install: on a changed plan it prints
        `PLAN_CHANGED`, then what is pending now, and exits 97 without installing. None: this
        provider cannot check on the host (the rollout rescans first instead). `fingerprint`
        is the scan's (`ProviderScan.fingerprint`), for a provider that can tell from it
        that nothing the plan depends on changed.
        """
        return None

    def scan_command_since(self, fingerprint: str) -> str:
        """The scan, or, when the host's inputs still match the last scan's `fingerprint` (""
        when there is none), a short answer that `parse_scan` reads as `unchanged`."""
        return self.scan_command()

    def settled_scan_command(self) -> str | None:
        """A scan for right after ALL of its pending updates were installed, cheaper than
        `scan_command` because nothing can be pending; None: use `scan_command`."""
        return None

    @abstractmethod
    def rollback_command(self, versions: dict[str, str]) -> str:
        """Put these packages back to exactly these versions."""

    @abstractmethod
    def versions_command(self) -> str:
        """A read-only command printing installed versions (read by `parse_versions`)."""

    def parse_versions(self, stdout: str) -> dict[str, str]:
        return self.parse_scan(stdout).installed

    def name_of(self) -> str:
        return self.KIND

    def for_host(self, host: Host) -> Self:
        """This configuration with `{host}`/`{vars.NAME}` resolved for one host."""
        changes: dict[str, Any] = {}
        for key, value in self:
            if isinstance(value, str):
                changes[key] = for_host(value, host)
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                changes[key] = [for_host(v, host) for v in value]
        return self.model_copy(update=changes)

    def describe(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
