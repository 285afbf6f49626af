"""`script`: anything else, by user-supplied commands that print JSON.

`scan` prints `{"installed": {name: version}, "pending": [{"name", "version", "current",
"security", "advisories"}]}`; `install` and `rollback` receive the plan as JSON on the
environment variable KTLO_PATCH_PLAN (`{name: version}`; an empty version means remove).
"""

from __future__ import annotations

import json
import shlex
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError

from tasks.patch.model import ProviderScan, Update
from tasks.patch.providers.base import ProviderBase


class _Pending(BaseModel):
    name: str
    version: str
    current: str | None = None
    security: bool = False
    advisories: list[str] = Field(default_factory=list)


class _Report(BaseModel):
    installed: dict[str, str] = Field(default_factory=dict)
    pending: list[_Pending] = Field(default_factory=list)


class ScriptProvider(ProviderBase):
    KIND: ClassVar[str] = "script"
    kind: Literal["script"] = "script"
    name: str = Field(default="script", description="the provider's name in plans and reports")
    scan: str = Field(description="shell command printing the scan JSON")
    install: str = Field(description="shell command installing $KTLO_PATCH_PLAN")
    rollback: str = Field(description="shell command restoring $KTLO_PATCH_PLAN")
    versions: str | None = Field(
        default=None, description="prints the scan JSON (only `installed` is read); default: scan"
    )

    def scan_command(self) -> str:
        return self.scan

    def name_of(self) -> str:
        return self.name

    def parse_scan(self, stdout: str) -> ProviderScan:
        try:
            report = _Report.model_validate_json(stdout.strip() or "{}")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return ProviderScan(
                provider=self.name,
                error=f"scan output is not the JSON expected: {where}: {first['msg']}",
            )
        pending = [
            Update(provider=self.name, origin=self.name, **p.model_dump()) for p in report.pending
        ]
        return ProviderScan(provider=self.name, installed=report.installed, pending=pending)

    def _with_plan(self, command: str, plan: dict[str, str]) -> str:
        return f"export KTLO_PATCH_PLAN={shlex.quote(json.dumps(plan))}; {command}"

    def install_command(self, updates: list[Update]) -> str:
        return self._with_plan(self.install, {u.name: u.version for u in updates})

    def rollback_command(self, versions: dict[str, str]) -> str:
        return self._with_plan(self.rollback, versions)

    def versions_command(self) -> str:
        return self.versions or self.scan
