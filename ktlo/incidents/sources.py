"""Incidents: what alerting systems send, normalised to one model, and how runbooks match them.

Payload models follow the senders' documented formats (Prometheus Alertmanager webhook v4,
Grafana alerting's webhook contact point, PagerDuty Events API v2, and a generic JSON
shape); unknown extra fields are accepted, since senders add fields over time, but what ktlo
relies on is required and typed, so a malformed body gets a 422 naming the field.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ktlo.runbook.incident import Incident, Source, Status
from ktlo.runbook.model import Runbook, Trigger

MAX_TEXT = 4000


class Lenient(BaseModel):
    model_config = ConfigDict(extra="allow")


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("must be an object of string values")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


class PromAlert(Lenient):
    status: Status
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime | None = None  # the senders spell their fields this way
    endsAt: datetime | None = None
    generatorURL: str | None = None
    fingerprint: str | None = None

    @field_validator("labels", "annotations", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> dict[str, str]:
        return _labels(value)


class AlertmanagerPayload(Lenient):
    """Prometheus Alertmanager webhook (version 4)."""

    version: str | None = None
    status: Status | None = None
    receiver: str | None = None
    groupKey: str | None = None
    alerts: list[PromAlert] = Field(min_length=1)
    externalURL: str | None = None
    truncatedAlerts: int = Field(
        default=0, ge=0, description="alerts of the group left out by the sender's max_alerts"
    )


class GrafanaAlert(PromAlert):
    dashboardURL: str | None = None
    panelURL: str | None = None
    valueString: str | None = None


class GrafanaPayload(Lenient):
    """Grafana alerting webhook contact point."""

    receiver: str | None = None
    status: Status | None = None
    title: str | None = None
    message: str | None = None
    alerts: list[GrafanaAlert] = Field(min_length=1)
    externalURL: str | None = None


class PagerDutyInner(Lenient):
    summary: str = Field(min_length=1, max_length=1024)
    source: str = Field(min_length=1)
    severity: Literal["critical", "error", "warning", "info"]
    timestamp: datetime | None = None
    component: str | None = None
    group: str | None = None
    class_: str | None = Field(default=None, alias="class")
    custom_details: Any = None


class PagerDutyPayload(Lenient):
    """PagerDuty Events API v2 (trigger / acknowledge / resolve)."""

    routing_key: str | None = None
    event_action: Literal["trigger", "acknowledge", "resolve"]
    dedup_key: str | None = Field(default=None, max_length=255)
    payload: PagerDutyInner | None = None
    links: list[dict[str, Any]] = Field(default_factory=list)


class GenericPayload(Lenient):
    """Anything else that can POST JSON: only `summary` is needed."""

    summary: str = Field(min_length=1)
    status: Status = "firing"
    severity: str | None = None
    dedup_key: str | None = Field(default=None, max_length=255)
    starts_at: datetime | None = Field(
        default=None,
        description="when this occurrence began: a later one than the open incident's is a "
        "new occurrence (the old incident is closed as superseded)",
    )
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    url: str | None = None

    @field_validator("labels", "annotations", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> dict[str, str]:
        return _labels(value)


PAYLOADS: dict[str, type[BaseModel]] = {
    "alertmanager": AlertmanagerPayload,
    "grafana": GrafanaPayload,
    "pagerduty": PagerDutyPayload,
    "generic": GenericPayload,
}


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _clip(text: str | None) -> str:
    text = (text or "").strip()
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _prom(source: Source, alert: PromAlert, extra_url: str | None, truncated: int) -> Incident:
    fingerprint = alert.fingerprint or _digest(alert.labels)
    summary = (
        alert.annotations.get("summary")
        or alert.annotations.get("description")
        or alert.labels.get("alertname")
        or "alert"
    )
    return Incident(
        source=source,
        key=f"{source}:{fingerprint}",
        status=alert.status,
        severity=alert.labels.get("severity"),
        summary=_clip(summary),
        labels=alert.labels,
        annotations=alert.annotations,
        starts_at=alert.startsAt,
        ends_at=alert.endsAt if alert.status == "resolved" else None,
        url=alert.generatorURL or extra_url,
        raw=alert.model_dump(mode="json", by_alias=True),
        truncated_alerts=truncated,
    )


def normalise(source: str, payload: BaseModel) -> list[Incident]:
    """A validated payload as incidents (group payloads hold several)."""
    if isinstance(payload, AlertmanagerPayload | GrafanaPayload):
        assert source in ("alertmanager", "grafana")
        src: Source = "alertmanager" if source == "alertmanager" else "grafana"
        truncated = payload.truncatedAlerts if isinstance(payload, AlertmanagerPayload) else 0
        return [_prom(src, alert, payload.externalURL, truncated) for alert in payload.alerts]
    if isinstance(payload, PagerDutyPayload):
        return [_pagerduty(payload)]
    if isinstance(payload, GenericPayload):
        identity = payload.model_dump(mode="json", exclude={"status", "starts_at"})
        key = payload.dedup_key or _digest(identity)
        return [
            Incident(
                source="generic",
                key=f"generic:{key}",
                status=payload.status,
                severity=payload.severity,
                summary=_clip(payload.summary),
                labels=payload.labels,
                annotations=payload.annotations,
                starts_at=payload.starts_at,
                url=payload.url,
                raw=payload.model_dump(mode="json", by_alias=True),
            )
        ]
    raise TypeError(f"unknown payload {type(payload).__name__}")


def _pagerduty(p: PagerDutyPayload) -> Incident:
    inner = p.payload
    key = p.dedup_key or _digest(p.model_dump(mode="json", exclude={"event_action"}))
    labels: dict[str, str] = {}
    if inner is not None:
        for name in ("source", "component", "group"):
            value = getattr(inner, name)
            if value:
                labels[name] = str(value)
        if inner.class_:
            labels["class"] = inner.class_
        if isinstance(inner.custom_details, dict):
            for k, v in inner.custom_details.items():
                labels.setdefault(str(k), v if isinstance(v, str) else json.dumps(v))
    return Incident(
        source="pagerduty",
        key=f"pagerduty:{key}",
        status="resolved" if p.event_action == "resolve" else "firing",
        severity=inner.severity if inner else None,
        summary=_clip(inner.summary if inner else f"PagerDuty {p.event_action} {key}"),
        labels=labels,
        starts_at=inner.timestamp if inner else None,
        url=next((str(link.get("href")) for link in p.links if link.get("href")), None),
        raw=p.model_dump(mode="json", by_alias=True, exclude={"routing_key"}),
    )


def occurrence(incident: Incident) -> datetime | None:
    """When this occurrence of the alert began, in UTC, where the sender says so.

    Alertmanager and Grafana send `startsAt`, the same on every repeat of one firing and
    later for a new firing of the same fingerprint; the generic source takes `starts_at`.
    PagerDuty's `payload.timestamp` is the time of each event, not of the occurrence, so it
    counts for nothing here: a PagerDuty sender starts a new occurrence with a new
    `dedup_key` (or a `resolve` first).
    """
    if incident.source == "pagerduty" or incident.starts_at is None:
        return None
    stamp = incident.starts_at
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def _value(incident: Incident, field: str) -> str | None:
    if field in incident.labels:
        return incident.labels[field]
    if field in ("source", "status", "severity", "summary", "key", "url"):
        value = getattr(incident, field)
        return None if value is None else str(value)
    return incident.annotations.get(field)


def trigger_matches(trigger: Trigger, incident: Incident) -> bool:
    if trigger.source != "any" and trigger.source != incident.source:
        return False
    for field, expected in trigger.match.items():
        actual = _value(incident, field)
        if actual is None:
            return False
        if isinstance(expected, str) and expected.startswith("~"):
            if not re.fullmatch(expected[1:], actual):
                return False
        elif isinstance(expected, bool):
            if actual.lower() != str(expected).lower():
                return False
        elif actual != str(expected):
            return False
    return True


def matching_runbooks(runbooks: list[Runbook], incident: Incident) -> list[Runbook]:
    return [rb for rb in runbooks if any(trigger_matches(t, incident) for t in rb.triggers)]
