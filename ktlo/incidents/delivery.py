"""How a delivery to the Prefect API failed, and what an event may hold.

A refusal that will never change (a permanent 4xx) must not be retried: one poisoned
item was retried every 32 s for 38 minutes, logging the 3.5 MB response each time. An
unreachable API is retried soon; an error answer further apart; both with a cap.
"""

from __future__ import annotations

import uuid
from typing import Any

from ktlo.store.models import utcnow

MAX_BACKOFF_S = 30  # the API is unreachable: try again soon, it may be back any moment
MAX_REFUSED_BACKOFF_S = 600  # the API answered with an error: back off further
# 4xx answers that may succeed later (auth being fixed, a conflict, rate limits); any
# other 4xx refuses the request itself, which is then never sent again.
RETRYABLE_4XX = frozenset({401, 403, 404, 408, 409, 425, 429})
MAX_ERROR_CHARS = 500  # of an API error kept and logged (a 422 can echo megabytes)
MAX_EVENT_LABELS = 400  # Prefect refuses a resource with more than 500 labels
MAX_EVENT_VALUE_CHARS = 1000
EVENT_NAMESPACE = uuid.UUID("5b6a3c0e-7f61-4a51-9d2e-6c1b1f0a2b7d")


def backoff(attempts: int, cap: float = MAX_BACKOFF_S) -> float:
    return float(min(cap, 2 ** max(0, min(attempts, 30) - 1) * 0.5))


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def refused_for_good(exc: BaseException) -> bool:
    """The API answered that this request will never be accepted (a permanent 4xx)."""
    status = _status_of(exc)
    return status is not None and 400 <= status < 500 and status not in RETRYABLE_4XX


def brief(exc: BaseException) -> str:
    """An error as one short line: the response a refusal echoes can be megabytes."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def retry_delay(exc: BaseException, attempts: int) -> float:
    """Unreachable: soon (capped at MAX_BACKOFF_S); an error answer: further apart."""
    cap = MAX_BACKOFF_S if _status_of(exc) is None else MAX_REFUSED_BACKOFF_S
    return backoff(attempts, cap)


def worth_logging(attempts: int) -> bool:
    """Log a retried item's 1st, 2nd, 4th, 8th... failure, not every one."""
    return attempts & (attempts - 1) == 0


def trimmed(values: Any) -> tuple[dict[str, str], int]:
    """At most MAX_EVENT_LABELS entries of clipped text, and how many were left out."""
    items = list((values or {}).items())
    kept = {
        str(k)[:MAX_EVENT_VALUE_CHARS]: str(v)[:MAX_EVENT_VALUE_CHARS]
        for k, v in items[:MAX_EVENT_LABELS]
    }
    return kept, max(0, len(items) - MAX_EVENT_LABELS)


def event_json(incident_id: str, target: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The Prefect event an outbox item sends, within Prefect's limits (labels trimmed)."""
    incident: dict[str, Any] = dict(payload)
    incident.pop("raw", None)  # kept in the store; an event is a notice, not the record
    labels, dropped = trimmed(
        {k: v for k, v in (incident.get("labels") or {}).items() if not k.startswith("prefect.")}
    )
    incident["labels"] = labels
    incident["annotations"], dropped_annotations = trimmed(incident.get("annotations"))
    if dropped or dropped_annotations:
        incident["left_out"] = {"labels": dropped, "annotations": dropped_annotations}
    return {
        # A deterministic id: sending it twice after a crash records it once.
        "id": str(uuid.uuid5(EVENT_NAMESPACE, f"{incident_id}:{target}")),
        "occurred": utcnow().isoformat(),
        "event": target,
        "resource": {
            **labels,
            "prefect.resource.id": f"ktlo.incident.{incident_id}",
            "prefect.resource.name": str(incident.get("summary", ""))[:200],
            "ktlo.incident.key": str(incident.get("key", "")),
            "ktlo.incident.source": str(incident.get("source", "")),
            "ktlo.incident.severity": str(incident.get("severity") or ""),
        },
        "related": [],
        "payload": {"incident": incident},
    }
