"""`pip`: a virtualenv's packages. Scan = `pip list` + `pip list --outdated` + `pip-audit`.

An update is a security update when pip-audit reports a vulnerability with a fix version in
the installed one; its ids (and aliases) are kept as advisories. `venv` may name a host
variable (`{vars.venv}`), replaced per host and shell-quoted.
"""

from __future__ import annotations

import json
import shlex
from typing import Any, ClassVar, Literal

from pydantic import Field

from tasks.patch.model import ProviderScan, Update
from tasks.patch.providers.base import ProviderBase

MARK = "@@ktlo-pip@@"


class PipProvider(ProviderBase):
    KIND: ClassVar[str] = "pip"
    kind: Literal["pip"] = "pip"
    venv: str = Field(description="the virtualenv's directory ({vars.NAME} for a host variable)")
    index_args: list[str] = Field(default_factory=list, description="e.g. --index-url URL")
    audit: bool = Field(default=True, description="run <venv>/bin/pip-audit -f json")
    audit_args: list[str] = Field(default_factory=list, description="e.g. -s osv --osv-url URL")

    def _pip(self, *args: str) -> str:
        python = f"{self.venv.rstrip('/')}/bin/python"
        return shlex.join([python, "-m", "pip", "--disable-pip-version-check", *args])

    def scan_command(self) -> str:
        parts = [
            self._pip("list", "--format=json"),
            f"echo {MARK}",
            self._pip("list", "--outdated", "--format=json", *self.index_args),
        ]
        if self.audit:
            audit = shlex.join(
                [f"{self.venv.rstrip('/')}/bin/pip-audit", "-f", "json", *self.audit_args]
            )
            parts += [f"echo {MARK}", f"{audit} || true"]
        return " && ".join(parts[:3]) + ("; " + "; ".join(parts[3:]) if self.audit else "")

    def parse_scan(self, stdout: str) -> ProviderScan:
        sections = stdout.split(MARK)
        installed = {p["name"].lower(): p["version"] for p in _json(sections[0], [])}
        fixes: dict[str, list[str]] = {}
        if len(sections) > 2:
            audit = _json(sections[2], {})
            for dep in audit.get("dependencies", []) if isinstance(audit, dict) else []:
                for vuln in dep.get("vulns", []):
                    if vuln.get("fix_versions"):
                        ids = [vuln.get("id", ""), *vuln.get("aliases", [])]
                        fixes.setdefault(dep["name"].lower(), []).extend(i for i in ids if i)
        pending = [
            Update(
                provider=self.KIND,
                name=p["name"].lower(),
                current=p.get("version"),
                version=p["latest_version"],
                security=p["name"].lower() in fixes,
                origin="pip",
                advisories=fixes.get(p["name"].lower(), []),
            )
            for p in (_json(sections[1], []) if len(sections) > 1 else [])
        ]
        return ProviderScan(provider=self.KIND, installed=installed, pending=pending)

    def install_command(self, updates: list[Update]) -> str:
        pins = [f"{u.name}=={u.version}" for u in updates]
        return self._pip("install", "--no-input", "--no-deps", *self.index_args, *pins)

    def rollback_command(self, versions: dict[str, str]) -> str:
        pins = [f"{n}=={v}" for n, v in sorted(versions.items()) if v]
        gone = [n for n, v in sorted(versions.items()) if not v]
        cmd = self._pip("install", "--no-input", "--no-deps", *self.index_args, *pins)
        return cmd + (" && " + self._pip("uninstall", "-y", *gone) if gone else "")

    def versions_command(self) -> str:
        return self._pip("list", "--format=json")


def _json(text: str, default: Any) -> Any:
    text = text.strip()
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        return default
    try:
        return json.loads(text[start:])
    except json.JSONDecodeError:
        return default
