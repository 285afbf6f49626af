"""The normalised incident, as runbooks see it (`incident` in templates).

It belongs to the runbook language: validation checks `incident.<field>` references against
it; the receivers in `ktlo.incidents` turn each sender's payload into one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Source = Literal["alertmanager", "grafana", "pagerduty", "generic"]
Status = Literal["firing", "resolved"]


class Incident(BaseModel):
    """One alert, whatever sent it. Runbooks see it as `incident` in templates."""

    source: Source
    key: str = Field(description="deduplication key: same key, same incident")
    status: Status
    severity: str | None = None
    summary: str
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    url: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict)
    truncated_alerts: int = Field(
        default=0, description="alerts of its group the sender left out (Alertmanager max_alerts)"
    )


INCIDENT_FIELDS = (*Incident.model_fields, "id")
