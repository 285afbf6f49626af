"""What the dashboard shows, as pydantic models: the page renders them, the JSON endpoints
return them (and the OpenAPI documents them), so the two never disagree.

`PublicPage` is a strict subset of `Page`: names, states and uptime only — no targets,
errors, run links or incident text — because `/status` needs no credentials.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field


def utc(ts: datetime | None) -> datetime | None:
    """SQLite reads stored times back naive; they are UTC."""
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts


class CheckView(StrEnum):
    """A check's state as shown: its alert state, or why its alerts are held back."""

    OK = "OK"
    DEGRADED = "DEGRADED"
    FAILING = "FAILING"
    MAINTENANCE = "maintenance"
    SUPPRESSED = "suppressed"  # a check it depends on is FAILING


class CellState(StrEnum):
    """One interval of the uptime bar, by its worst counted result."""

    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"
    MAINTENANCE = "maintenance"
    NONE = "none"  # no results in the interval


class Bar(BaseModel):
    """The uptime bar: one interval per cell, oldest first (lists, not objects: a page of
    1,000 checks has 24,000 cells)."""

    start: datetime = Field(description="start of the first cell (UTC)")
    span_s: int = Field(description="length of each cell in seconds")
    states: list[CellState] = Field(description="each cell's worst counted result")
    up: list[int] = Field(description="results up (ok or degraded) per cell")
    counted: list[int] = Field(description="results counted per cell (maintenance is not)")


class Uptime(BaseModel):
    """Percent of counted results that were up (ok or degraded); null: no results."""

    h24: float | None = Field(None, alias="24h")
    d7: float | None = Field(None, alias="7d")
    d30: float | None = Field(None, alias="30d")

    model_config = {"populate_by_name": True, "serialize_by_alias": True}


class PublicCheck(BaseModel):
    name: str
    state: CheckView
    uptime: Uptime
    bar: Bar = Field(description="one cell per hour of the last 24")


class Group(BaseModel):
    name: str
    checks: list[PublicCheck]


class PublicPage(BaseModel):
    title: str = "ktlo status"
    generated_at: datetime
    overall: CheckView
    groups: list[Group]


class Check(PublicCheck):
    key: str
    runbook: str
    type: str
    target: str = Field(description="credential-free target (redacted when stored)")
    since: datetime | None
    last_checked_at: datetime | None
    latency_ms: float | None
    response_ms: list[float | None] = Field(description="average per hour, aligned with `bar`")
    last_error: str | None
    suppressed: str | None
    run_url: str | None
    remediation: str | None


class Backup(BaseModel):
    source: str
    newest_id: str | None
    newest_at: datetime | None
    age_s: float | None
    max_age_s: float | None = Field(description="the RPO from a backup.freshness step, if any")
    fresh: bool | None
    sizes: list[int] = Field(description="sizes of the latest complete backups, oldest first")
    last_restore_at: datetime | None
    last_restore_ok: bool | None


class Run(BaseModel):
    runbook: str
    flow_run_id: str | None
    status: str
    url: str | None


class Incident(BaseModel):
    key: str
    status: str
    severity: str | None
    summary: str
    source: str
    first_seen: datetime
    resolved_at: datetime | None
    runs: list[Run]


class Section(BaseModel):
    """A section another domain contributes (patching, DR): a table of rows."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str | None = None


class Page(BaseModel):
    title: str = "ktlo dashboard"
    generated_at: datetime
    overall: CheckView
    checks: list[Check]
    backups: list[Backup]
    incidents: list[Incident]
    sections: list[Section] = Field(default_factory=list)
