"""`apt`: Debian/Ubuntu packages. Scan = `dpkg-query -W` + `apt-get -s dist-upgrade` (read-only).

A package is a security update when one of its origins is a security suite
(`Debian-Security:12/stable-security`, `Ubuntu:22.04/jammy-security`). Installs and rollbacks
never prompt: DEBIAN_FRONTEND=noninteractive, NEEDRESTART_MODE=l (list, do not restart),
confdef/confold for conffiles, and a DPkg::Lock::Timeout so a held dpkg lock is a clear
failure instead of a hang. The dpkg database is found through apt's own configuration
(`apt-config shell`), so an `APT_CONFIG` in the host's env is honoured everywhere.
"""

from __future__ import annotations

import re
import shlex
from typing import ClassVar, Literal

from pydantic import Field

from tasks.patch.model import ProviderScan, Update
from tasks.patch.providers.base import PLAN_CHANGED, PLAN_CHANGED_EXIT, ProviderBase

MARK = "@@ktlo-apt@@"
INST = re.compile(r"^Inst (\S+)(?: \[([^\]]*)\])? \((\S+) (.*?)(?: \[[^\]]*\])?\)")
SIMULATE = "LC_ALL=C apt-get -s -q -o Debug::NoLocking=1 dist-upgrade"
# `name current version` per `Inst` line of the simulation (current empty for a new package)
INST_SED = r"sed -nE 's/^Inst ([^ ]+)( \[([^]]*)\])? \(([^ ]+) .*/\1 \3 \4/p'"
NONINTERACTIVE = "export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l NEEDRESTART_SUSPEND=1; "


def is_security(origin: str) -> bool:
    return any("security" in part.lower() for part in re.split(r",\s*", origin) if part)


def plan_line(update: Update) -> str:
    """How the guarded install's check prints one pending update: `name current version`."""
    return f"{update.name} {update.current or ''} {update.version}"


class AptProvider(ProviderBase):
    KIND: ClassVar[str] = "apt"
    kind: Literal["apt"] = "apt"
    refresh: bool = Field(default=False, description="run `apt-get update` before the scan")
    lock_timeout_s: int = Field(default=60, ge=0, description="DPkg::Lock::Timeout")

    def _dpkg_query(self) -> str:
        # APT::Architectures set: apt-config would otherwise run `dpkg
        # --print-foreign-architectures` (a fork and exec per scan) for a path it does not need
        return (
            'eval "$(apt-config -o APT::Architectures=all shell KTLO_STATUS Dir::State::status/f)"; '
            'dpkg-query --admindir="$(dirname "${KTLO_STATUS:-/var/lib/dpkg/status}")" '
            "-W -f='${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'"
        )

    def scan_command(self) -> str:
        update = "apt-get update -qq >&2 && " if self.refresh else ""
        return f"{self._dpkg_query()} && echo {MARK} && {update}{SIMULATE}"

    def parse_scan(self, stdout: str) -> ProviderScan:
        head, _, simulated = stdout.partition(MARK)
        installed: dict[str, str] = {}
        for line in head.splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and parts[2].strip().startswith("i"):
                installed[parts[0]] = parts[1]
        pending: list[Update] = []
        for line in simulated.splitlines():
            m = INST.match(line)
            if m:
                name, current, version, origin = m.groups()
                pending.append(
                    Update(
                        provider=self.KIND,
                        name=name,
                        current=current or installed.get(name),
                        version=version,
                        security=is_security(origin),
                        origin=origin.strip(),
                    )
                )
        return ProviderScan(provider=self.KIND, installed=installed, pending=pending)

    def _apt(self, extra: str, pins: list[str]) -> str:
        opts = [
            "-y",
            "-q",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
            "-o",
            f"DPkg::Lock::Timeout={self.lock_timeout_s}",
        ]
        return NONINTERACTIVE + shlex.join(["apt-get", *opts, *extra.split(), "install", *pins])

    def install_command(self, updates: list[Update]) -> str:
        return self._apt("", [u.pin for u in updates])

    def guarded_install_command(self, pending: list[Update], approved: list[Update]) -> str:
        """Simulate on the host, compare `name current version` of every pending update with
        the scan's, and install only when they are the same (installed versions included, so
        the versions recorded for rollback are exactly what the host has)."""
        expected = "\n".join(sorted(plan_line(u) for u in pending))
        return (
            f'sim=$({SIMULATE}) || {{ printf "%s\\n" "$sim" >&2; exit 1; }}; '
            f'now=$(printf "%s\\n" "$sim" | {INST_SED} | LC_ALL=C sort); '
            f'if [ "$now" != {shlex.quote(expected)} ]; then '
            f'echo {PLAN_CHANGED}; printf "%s\\n" "$now"; exit {PLAN_CHANGED_EXIT}; fi; '
            + self.install_command(approved)
        )

    def rollback_command(self, versions: dict[str, str]) -> str:
        pins = [f"{n}={v}" if v else f"{n}-" for n, v in sorted(versions.items())]
        return self._apt("--allow-downgrades", pins)

    def versions_command(self) -> str:
        return self._dpkg_query()
