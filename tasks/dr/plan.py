"""DR plans: YAML files in KTLO_PLANS, validated like runbooks (`path:line: message`).

A plan names services with their objectives (RTO/RPO), their data (recovery points from a
provider registered in `ktlo.recovery`), the runbook that recovers them and the health checks
that prove them recovered. Recovery order is the dependency graph in waves: a service starts
once everything it depends on is verified, services of one wave recover concurrently.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from ktlo.errors import KtloError, Problem, RunbookInvalid
from ktlo.runbook.model import Schedule
from ktlo.runbook.problems import pydantic_problems
from ktlo.runbook.validation import find_cycle
from ktlo.runbook.yamlsrc import Source, parse_yaml
from ktlo.settings import get_settings

SLUG = r"^[a-z0-9][a-z0-9_-]*$"
SUFFIXES = (".yaml", ".yml")


class Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(Closed):
    provider: str = Field(default="backup", description="data kind in ktlo.recovery")
    source: str = Field(min_length=1, description="e.g. the backup catalog's source name")


class ScratchSpec(Closed):
    postgres: str | None = Field(
        default=None, description="server DSN that gets a scratch database for the drill"
    )


class TargetSpec(Closed):
    """The real targets `ktlo dr execute` recovers into (a drill uses scratch ones); templates
    see them as `scratch.*`, so one plan serves both."""

    dir: str = Field(min_length=1, description="the service's working directory")
    port: int = Field(default=0, ge=0, le=65535)
    postgres: str | None = Field(default=None, description="server DSN of the real database")
    database: str | None = Field(default=None, description="the real database's name")


class RecoverSpec(Closed):
    runbook: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)


class Service(Closed):
    name: str = Field(pattern=SLUG)
    tier: int = Field(default=1, ge=0)
    rto_s: float = Field(gt=0, description="recovery-time objective, seconds")
    rpo_s: float = Field(gt=0, description="recovery-point objective, seconds")
    depends_on: list[str] = Field(default_factory=list)
    data: list[DataSpec] = Field(default_factory=list)
    scratch: ScratchSpec = Field(default_factory=ScratchSpec)
    target: TargetSpec | None = Field(default=None, description="real targets, for dr execute")
    recover: RecoverSpec
    verify: list[dict[str, Any]] = Field(
        default_factory=list, description="health check definitions, as in health.sweep"
    )


class Plan(Closed):
    name: str = Field(pattern=SLUG)
    description: str = ""
    schedule: Schedule | None = Field(
        default=None, description="drill schedule: {cron, timezone} or {interval_s}"
    )
    notify: list[str] = Field(default_factory=list, description="readiness changes go here")
    approval_timeout_s: float = Field(
        default=3600, gt=0, description="how long `dr execute` waits for its approval"
    )
    services: list[Service] = Field(min_length=1)
    _source: Source | None = PrivateAttr(default=None)
    _hash: str = PrivateAttr(default="")

    @property
    def path(self) -> str:
        return self._source.path if self._source else f"<{self.name}>"

    @property
    def content_hash(self) -> str:
        """Changes whenever the plan's file changes: a changed plan needs a new drill."""
        return self._hash

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def waves(self) -> list[list[Service]]:
        """Services grouped by depth in the dependency graph (plan order inside a wave)."""
        depth: dict[str, int] = {}

        def level(svc: Service) -> int:
            if svc.name not in depth:
                depth[svc.name] = 1 + max(
                    (level(self.service(d)) for d in svc.depends_on), default=-1
                )
            return depth[svc.name]

        out: list[list[Service]] = []
        for svc in self.services:
            n = level(svc)
            while len(out) <= n:
                out.append([])
            out[n].append(svc)
        return out


def parse_plan(source: Source, text_hash: str) -> Plan:
    if not isinstance(source.data, dict):
        raise RunbookInvalid([source.problem((), "a plan must be a YAML mapping")])
    try:
        plan = Plan.model_validate(source.data)
    except ValidationError as exc:
        raise RunbookInvalid(pydantic_problems(source, exc, Plan)) from None
    plan._source, plan._hash = source, text_hash
    problems = _graph_problems(plan, source)
    if problems:
        raise RunbookInvalid(problems)
    return plan


def _graph_problems(plan: Plan, source: Source) -> list[Problem]:
    problems: list[Problem] = []
    names: set[str] = set()
    for i, svc in enumerate(plan.services):
        if svc.name in names:
            problems.append(
                source.problem(("services", i, "name"), f"duplicate service '{svc.name}'")
            )
        names.add(svc.name)
    for i, svc in enumerate(plan.services):
        for j, dep in enumerate(svc.depends_on):
            if dep not in names:
                problems.append(
                    source.problem(
                        ("services", i, "depends_on", j),
                        f"service '{svc.name}': depends_on unknown service '{dep}'",
                    )
                )
    if not problems:
        cycle = find_cycle({s.name: list(s.depends_on) for s in plan.services})
        if cycle:
            i = next(k for k, s in enumerate(plan.services) if s.name == cycle[0])
            problems.append(
                source.problem(
                    ("services", i, "depends_on"), f"dependency cycle: {' -> '.join(cycle)}"
                )
            )
    return problems


_parsed: dict[tuple[str, str], Plan] = {}


def load_plan(path: Path) -> Plan:
    """Load and validate a plan; an unchanged file (same sha256) is not parsed again."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RunbookInvalid([Problem(str(path), 1, f"cannot read file: {exc}")]) from None
    digest = hashlib.sha256(raw).hexdigest()
    key = (str(path), digest)
    if key not in _parsed:
        text = raw.decode("utf-8", errors="replace")
        _parsed[key] = parse_plan(parse_yaml(text, str(path)), digest)
    return _parsed[key]


def plan_files(directory: Path | None = None) -> list[Path]:
    folder = directory or get_settings().plans_dir
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file())


def load_plans(directory: Path | None = None) -> tuple[list[Plan], list[Problem]]:
    plans: list[Plan] = []
    problems: list[Problem] = []
    for path in plan_files(directory):
        try:
            plans.append(load_plan(path))
        except RunbookInvalid as exc:
            problems.extend(exc.problems)
    return plans, problems


def find_plan(ref: str, directory: Path | None = None) -> Path:
    """A plan by file path or by name in the plans directory."""
    if "/" in ref or ref.endswith(SUFFIXES):
        path = Path(ref)
        if not path.is_file():
            raise KtloError(f"plan file {ref} not found")
        return path
    for path in plan_files(directory):
        if path.stem == ref:
            return path
    for path in plan_files(directory):
        try:
            if load_plan(path).name == ref:
                return path
        except RunbookInvalid:
            continue
    folder = directory or get_settings().plans_dir
    raise KtloError(f"no plan named '{ref}' in {folder}")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())
