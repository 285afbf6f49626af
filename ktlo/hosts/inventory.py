"""The hosts inventory (SPEC §10): which machines ktlo may act on, and how to reach them.

Shared by every domain that runs commands on hosts (patching, failover, DR). Loaded from
`KTLO_INVENTORY` (default `inventory.yaml` beside the runbooks directory); a bad file is a
`path:line: message` error, like a runbook's.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ktlo.errors import KtloError, Problem, RunbookInvalid
from ktlo.runbook.problems import pydantic_problems
from ktlo.runbook.yamlsrc import load_yaml
from ktlo.settings import get_settings

__all__ = [
    "Connection",
    "Host",
    "Inventory",
    "InventoryMissing",
    "UnknownHosts",
    "load_inventory",
]

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=128)]
EnvName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
SELECT_ALL = "all"


class InventoryMissing(KtloError):
    """There is no inventory file: nothing can run on hosts until one is written."""


class UnknownHosts(KtloError):
    """A selector names hosts or groups the inventory does not have."""


class Connection(StrEnum):
    SSH = "ssh"
    LOCAL = "local"


class _Common(BaseModel):
    """Fields a host may set and `defaults` may set for all hosts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str | None = Field(default=None, description="SSH login (default: current user)")
    port: int | None = Field(default=None, ge=1, le=65535)
    known_hosts: Path | None = Field(
        default=None, description="known_hosts file the host key must be in (strict by default)"
    )
    key_file: Path | None = Field(default=None, description="private key for the login")
    password_secret: str | None = Field(
        default=None, description="name of the secret() holding the login password"
    )
    passphrase_secret: str | None = Field(
        default=None, description="name of the secret() holding the key's passphrase"
    )
    strict_host_keys: bool | None = Field(
        default=None, description="false accepts any host key (labs only; never the default)"
    )
    connect_timeout_s: float | None = Field(default=None, gt=0)
    env: dict[EnvName, str] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)


class Host(BaseModel):
    """One machine, with the defaults already applied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    address: str = "127.0.0.1"
    port: int = Field(default=22, ge=1, le=65535)
    user: str | None = None
    groups: tuple[Name, ...] = ()
    env: dict[EnvName, str] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    connection: Connection = Connection.SSH
    known_hosts: Path | None = None
    key_file: Path | None = None
    password_secret: str | None = None
    passphrase_secret: str | None = None
    strict_host_keys: bool = True
    connect_timeout_s: float = Field(default=10.0, gt=0)

    @property
    def target(self) -> str:
        """How the host is named in messages: `web-1 (ops@10.0.0.11:22)`."""
        if self.connection is Connection.LOCAL:
            return f"{self.name} (local)"
        who = f"{self.user}@" if self.user else ""
        return f"{self.name} ({who}{self.address}:{self.port})"


class _HostEntry(_Common):
    address: str | None = None
    groups: list[Name] = Field(default_factory=list)
    connection: Connection = Connection.SSH


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: _Common = Field(default_factory=_Common)
    hosts: dict[Name, _HostEntry | None] = Field(default_factory=dict)


class Inventory(BaseModel):
    """Hosts by name; `select()` turns a selector into hosts, in inventory order."""

    model_config = ConfigDict(frozen=True)

    hosts: dict[str, Host] = Field(default_factory=dict)
    path: Path | None = None

    @property
    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for host in self.hosts.values():
            for group in host.groups:
                out.setdefault(group, []).append(host.name)
        return out

    def select(self, selector: str | list[str] | None = None) -> list[Host]:
        """`all`, a group, a host name, or a comma-separated list of those (unknown: an error)."""
        if selector is None:
            selector = SELECT_ALL
        parts = selector if isinstance(selector, list) else re.split(r"\s*,\s*", selector.strip())
        wanted: dict[str, None] = {}
        unknown: list[str] = []
        groups = self.groups
        for part in (p.strip() for p in parts):
            if not part:
                continue
            if part == SELECT_ALL:
                wanted.update(dict.fromkeys(self.hosts))
            elif part in self.hosts:
                wanted[part] = None
            elif part in groups:
                wanted.update(dict.fromkeys(groups[part]))
            else:
                unknown.append(part)
        if unknown:
            where = f" in {self.path}" if self.path else ""
            raise UnknownHosts(
                f"no host or group named {', '.join(repr(u) for u in unknown)}{where} "
                f"(hosts: {', '.join(self.hosts) or 'none'}; groups: {', '.join(groups) or 'none'})"
            )
        if not wanted:
            raise UnknownHosts(f"host selector {selector!r} selects no host")
        return [self.hosts[name] for name in self.hosts if name in wanted]


def _merge(name: str, entry: _HostEntry | None, defaults: _Common) -> Host:
    entry = entry or _HostEntry()
    fields: dict[str, Any] = {"name": name, "connection": entry.connection}
    for key in _Common.model_fields:
        mine, common = getattr(entry, key), getattr(defaults, key)
        if key in ("env", "vars"):
            fields[key] = {**common, **mine}
        elif mine is not None:
            fields[key] = mine
        elif common is not None:
            fields[key] = common
    if entry.address is not None:
        fields["address"] = entry.address
    fields["groups"] = tuple(entry.groups)
    return Host(**fields)


def load_inventory(path: Path | None = None) -> Inventory:
    """Read and check the inventory; a missing file is `InventoryMissing`, a bad one `path:line`."""
    target = path or get_settings().inventory_path
    if not target.is_file():
        raise InventoryMissing(
            f"no inventory at {target}: write one (see docs/patching.md) or set KTLO_INVENTORY"
        )
    source = load_yaml(target)
    data = source.data if source.data is not None else {}
    if not isinstance(data, dict):
        raise RunbookInvalid([Problem(str(target), 1, "an inventory is a mapping with 'hosts'")])
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        raise RunbookInvalid(pydantic_problems(source, exc, _File)) from None
    hosts: dict[str, Host] = {}
    problems: list[Problem] = []
    for name, entry in parsed.hosts.items():
        try:
            hosts[name] = _merge(name, entry, parsed.defaults)
        except ValidationError as exc:
            problems.extend(pydantic_problems(source, exc, Host, base=("hosts", name)))
    groups = {g for h in hosts.values() for g in h.groups} | {SELECT_ALL}
    for name in sorted(set(hosts) & groups):
        problems.append(
            source.problem(("hosts", name), f"{name!r} names both a host and a group (or is 'all')")
        )
    if problems:
        raise RunbookInvalid(problems)
    return Inventory(hosts=hosts, path=target)
