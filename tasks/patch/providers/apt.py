"""`apt`: Debian/Ubuntu packages. Scan = `dpkg-query -W` + `apt-get -s dist-upgrade` (read-only).

A package is a security update when one of its origins is a security suite
(`Debian-Security:12/stable-security`, `Ubuntu:22.04/jammy-security`). Installs and rollbacks
never prompt: DEBIAN_FRONTEND=noninteractive, NEEDRESTART_MODE=l (list, do not restart),
confdef/confold for conffiles, and a DPkg::Lock::Timeout so a held dpkg lock is a clear
failure instead of a hang. The dpkg database is found through apt's own configuration
(`apt-config shell`), so an `APT_CONFIG` in the host's env is honoured everywhere.

A scan also prints a fingerprint of everything apt's plan is computed from: the dpkg status
and architectures, the package lists, preferences, configuration and sources (each file's
inode, size and times, as apt itself validates its pkgcache.bin). The guarded install skips its
simulation when the fingerprint is still the scan's (same inputs, same plan), and after it
installed the whole pending plan it does not simulate again (nothing is left to upgrade from
the same lists). On a real host each simulation costs apt a full dependency solve; on the lab
they were two of the three simulations a patched host paid.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import ClassVar, Literal

from pydantic import Field

from tasks.patch.model import ProviderScan, Update
from tasks.patch.providers.base import PLAN_CHANGED, PLAN_CHANGED_EXIT, ProviderBase

MARK = "@@ktlo-apt@@"
FINGERPRINT = "@@ktlo-apt-fp@@"
UNCHANGED = "@@ktlo-apt-unchanged@@"
INST = re.compile(r"^Inst (\S+)(?: \[([^\]]*)\])? \((\S+) (.*?)(?: \[[^\]]*\])?\)")
SIMULATE = "LC_ALL=C apt-get -s -q -o Debug::NoLocking=1 dist-upgrade"
# `name current version` per `Inst` line of the simulation (current empty for a new package)
INST_SED = r"sed -nE 's/^Inst ([^ ]+)( \[([^]]*)\])? \(([^ ]+) .*/\1 \3 \4/p'"
NONINTERACTIVE = "export DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l NEEDRESTART_SUSPEND=1; "
# apt's own paths (shell variable -> `apt-config shell` key): read once per remote command
# unless the command set them from a scan (KTLO_APT_READ). APT::Architectures is set because
# apt-config would otherwise run `dpkg --print-foreign-architectures`, a fork and exec.
PATH_KEYS = {
    "KTLO_STATUS": "Dir::State::status/f",
    "KTLO_LISTS": "Dir::State::lists/d",
    "KTLO_EXTENDED": "Dir::State::extended_states/f",
    "KTLO_PREFS": "Dir::Etc::Preferences/f",
    "KTLO_PREFS_D": "Dir::Etc::PreferencesParts/d",
    "KTLO_MAIN": "Dir::Etc::main/f",
    "KTLO_PARTS": "Dir::Etc::Parts/d",
    "KTLO_SOURCES": "Dir::Etc::SourceList/f",
    "KTLO_SOURCES_D": "Dir::Etc::SourceParts/d",
}
PATHS = (
    '[ -n "${KTLO_APT_READ:-}" ] || eval "$(apt-config -o APT::Architectures=all shell '
    "KTLO_APT_READ Dir " + " ".join(f"{k} {v}" for k, v in PATH_KEYS.items()) + ')"; '
)
PATH_MARK = "@@ktlo-apt-path@@"
PRINT_PATHS = f"printf '{PATH_MARK} %s\\n' " + " ".join(f'"{k}=${k}"' for k in PATH_KEYS)
DPKG_QUERY = (
    'KTLO_ADMIN=${KTLO_STATUS:-/var/lib/dpkg/status} && dpkg-query --admindir="${KTLO_ADMIN%/*}" '
    "-W -f='${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'"
)
# Each input of apt's plan (dpkg's status and its journal, architectures, lists, preferences,
# configuration, sources), and each entry of their directories (a directory's own times
# change when an entry comes or goes), as path, inode, size and times; then their checksum.
# Nothing readable gives `... 0` (an empty input), which never counts as a fingerprint.
FINGERPRINT_OF = (
    'find -L "$KTLO_STATUS" "${KTLO_STATUS%/*}/updates" "${KTLO_STATUS%/*}/arch" "$KTLO_LISTS" '
    '"$KTLO_EXTENDED" '
    '"$KTLO_PREFS" "$KTLO_PREFS_D" "$KTLO_MAIN" "$KTLO_PARTS" "$KTLO_SOURCES" '
    '"$KTLO_SOURCES_D" ${APT_CONFIG:+"$APT_CONFIG"} -maxdepth 1 ! -name lock ! -name partial '
    "-printf '%p %i %s %T@ %C@\\n' 2>/dev/null | cksum"
)
PRINT_FINGERPRINT = f'echo "{FINGERPRINT} $({FINGERPRINT_OF})" && {PRINT_PATHS}'


def _stored(fingerprint: str) -> tuple[str, dict[str, str]] | None:
    """(checksum, paths) from a scan's fingerprint; None when there is none to trust."""
    try:
        data = json.loads(fingerprint) if fingerprint else None
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("paths"), dict):
        return None
    paths = {k: str(v) for k, v in data["paths"].items() if k in PATH_KEYS}
    checksum = str(data.get("sum") or "")
    return (checksum, paths) if checksum and len(paths) == len(PATH_KEYS) else None


def _while_unchanged(
    stored: tuple[str, dict[str, str]], unchanged: str, changed: str, first: str = ""
) -> str:
    """`unchanged` while apt's inputs match the scan's fingerprint, else `changed` with apt's
    paths read again. The scan's paths are set first (no apt-config when nothing changed);
    `first` (an `... && `) runs before the check."""
    checksum, paths = stored
    preset = " ".join(f"{k}={shlex.quote(v)}" for k, v in paths.items())
    return (
        f'{preset} KTLO_APT_READ=/; {first}if [ "$({FINGERPRINT_OF})" = {shlex.quote(checksum)} ]; '
        f"then {unchanged}; else KTLO_APT_READ=; {PATHS}{changed}; fi"
    )


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

    def _update(self) -> str:
        return "apt-get update -qq >&2 && " if self.refresh else ""

    def scan_command(self) -> str:
        return self._scan(self._update())

    def _scan(self, first: str) -> str:
        return f"{PATHS}{first}{PRINT_FINGERPRINT} && {DPKG_QUERY} && echo {MARK} && {SIMULATE}"

    def scan_command_since(self, fingerprint: str) -> str:
        """Nothing apt's answer depends on changed since the last scan (dpkg's status is part
        of the fingerprint, so the installed versions are the same too): only the check runs,
        a stat of the inputs instead of a dependency solve; else the whole scan."""
        stored = _stored(fingerprint)
        if stored is None:
            return self.scan_command()
        return _while_unchanged(stored, f"echo {UNCHANGED}", self._scan(""), self._update())

    def settled_scan_command(self) -> str:
        """After the whole pending plan was installed: the fingerprint and installed versions,
        and an empty simulation — the plan was all of `dist-upgrade`, so from the same lists
        nothing is left (the fingerprint taken now vouches for the next rollout's guard)."""
        return f"{PATHS}{PRINT_FINGERPRINT} && {DPKG_QUERY} && echo {MARK}"

    def parse_scan(self, stdout: str) -> ProviderScan:
        if stdout.strip() == UNCHANGED:
            return ProviderScan(provider=self.KIND, unchanged=True)
        head, _, simulated = stdout.partition(MARK)
        installed: dict[str, str] = {}
        checksum, paths = "", {}
        for line in head.splitlines():
            if line.startswith(FINGERPRINT + " "):
                checksum = line.removeprefix(FINGERPRINT).strip()
                continue
            if line.startswith(PATH_MARK + " "):
                key, _, value = line.removeprefix(PATH_MARK + " ").partition("=")
                paths[key] = value
                continue
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
        known = checksum and not checksum.endswith(" 0") and set(paths) == set(PATH_KEYS)
        fingerprint = json.dumps({"sum": checksum, "paths": paths}) if known else ""
        return ProviderScan(
            provider=self.KIND, installed=installed, pending=pending, fingerprint=fingerprint
        )

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

    def guarded_install_command(
        self, pending: list[Update], approved: list[Update], fingerprint: str = ""
    ) -> str:
        """Simulate on the host, compare `name current version` of every pending update with
        the scan's, and install only when they are the same (installed versions included, so
        the versions recorded for rollback are exactly what the host has). When the scan's
        fingerprint is given and apt's inputs still match it, the plan is the scan's without
        simulating."""
        expected = "\n".join(sorted(plan_line(u) for u in pending))
        check = (
            f'sim=$({SIMULATE}) || {{ printf "%s\\n" "$sim" >&2; exit 1; }}; '
            f'now=$(printf "%s\\n" "$sim" | {INST_SED} | LC_ALL=C sort); '
            f'if [ "$now" != {shlex.quote(expected)} ]; then '
            f'echo {PLAN_CHANGED}; printf "%s\\n" "$now"; exit {PLAN_CHANGED_EXIT}; fi; '
        )
        stored = _stored(fingerprint)
        if stored is not None:
            check = _while_unchanged(stored, ":", check.rstrip("; ")) + "; "
        return check + self.install_command(approved)

    def rollback_command(self, versions: dict[str, str]) -> str:
        pins = [f"{n}={v}" if v else f"{n}-" for n, v in sorted(versions.items())]
        return self._apt("--allow-downgrades", pins)

    def versions_command(self) -> str:
        return PATHS + DPKG_QUERY
