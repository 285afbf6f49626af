"""The incident receiver (SPEC §7): authenticated, size-limited, durable, and fast to answer.

`ktlo.incidents.guard.Guard` answers what needs no app (credentials, size and time limits,
nesting depth, parsing into the sender's model: 401/408/413/422); `ktlo.incidents.server`
holds connections to their limits. FastAPI then routes the parsed payload: the incidents
and their outbox work are stored in one transaction, and only then is 202 returned. Runs
are started by the dispatcher after the response.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ktlo import __version__
from ktlo.incidents.guard import DEFAULT_LIMIT, LIMITS, PAYLOAD_KEY, Guard, Signature, limit_text
from ktlo.incidents.index import RunbookIndex
from ktlo.incidents.intake import Ack, Intake
from ktlo.incidents.outbox import Dispatcher
from ktlo.incidents.server import make_server
from ktlo.incidents.sources import PAYLOADS, AlertmanagerPayload, GrafanaPayload, normalise
from ktlo.incidents.store import OutboxStatus, count_outbox, store_ok

__all__ = ["create_app", "make_server"]
log = logging.getLogger("ktlo.incidents.receiver")
THREAD_NORMALISE_ALERTS = 100  # larger groups are normalised off the event loop


class Accepted(BaseModel):
    accepted: int
    incidents: list[dict[str, Any]]
    truncated_alerts: int = 0


def _ack_json(acks: list[Ack], truncated: int) -> dict[str, Any]:
    return {
        "accepted": len(acks),
        "incidents": [
            {"key": a.key, "id": a.id, "outcome": a.outcome, "runbooks": a.runbooks} for a in acks
        ],
        "truncated_alerts": truncated,
    }


def _body_doc(source: str) -> dict[str, Any]:
    """The request body in the OpenAPI schema (the guard parses it, not FastAPI)."""
    name = PAYLOADS[source].__name__
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _with_payload_schemas(app: FastAPI) -> Any:
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in PAYLOADS.values():
                found = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(found.pop("$defs", {}))
                components[model.__name__] = found
        return app.openapi_schema or default()

    return openapi


def create_app(
    token: str | None,
    *,
    dispatcher: Dispatcher | None = None,
    runbooks: RunbookIndex | None = None,
) -> Any:
    """The receiver as an ASGI app (guard around FastAPI). `token` None means no auth."""
    from ktlo.settings import get_settings

    settings = get_settings()
    index = runbooks or (dispatcher.runbooks if dispatcher else RunbookIndex())
    intake = Intake()
    app = FastAPI(
        title="ktlo incident receiver",
        version=__version__,
        description="Alerts in; runbooks out. Every endpoint needs `Authorization: Bearer "
        f"<token>` or `X-Ktlo-Signature` ({Signature.HINT}).",
    )

    @app.exception_handler(Exception)
    async def failed(_request: Request, exc: Exception) -> JSONResponse:
        if not await run_in_threadpool(store_ok):
            detail = f"the ktlo store is not available: {type(exc).__name__}"
            return JSONResponse(status_code=503, content={"detail": detail})
        log.error("webhook request failed: %s", type(exc).__name__, exc_info=exc)
        detail = f"internal error in the receiver (logged): {type(exc).__name__}"
        return JSONResponse(status_code=500, content={"detail": detail})

    async def accept(source: str, request: Request) -> JSONResponse:
        payload: BaseModel = request.scope[PAYLOAD_KEY]
        truncated = getattr(payload, "truncatedAlerts", 0)
        if truncated:
            log.warning(
                "%s group %s: the sender left out %d alert(s) (max_alerts)",
                source,
                getattr(payload, "groupKey", None),
                truncated,
            )
        many = isinstance(payload, AlertmanagerPayload | GrafanaPayload) and (
            len(payload.alerts) > THREAD_NORMALISE_ALERTS
        )
        incidents = (
            await run_in_threadpool(normalise, source, payload)
            if many
            else normalise(source, payload)
        )
        acks = await intake.receive(incidents, index.runbooks())
        if dispatcher is not None:
            dispatcher.received()
        return JSONResponse(status_code=202, content=_ack_json(acks, truncated))

    def responses(source: str) -> dict[int | str, dict[str, Any]]:
        limit = limit_text(LIMITS.get(source, DEFAULT_LIMIT))
        return {
            202: {"model": Accepted, "description": "stored; runs start after the response"},
            401: {"description": "missing, wrong, stale or old-format credentials"},
            408: {"description": "the body did not arrive in time"},
            413: {"description": f"body over {limit}"},
            422: {"description": "malformed body; `detail[].loc` names the field"},
        }

    def hook(source: str, doc: str) -> None:
        async def endpoint(request: Request) -> JSONResponse:
            return await accept(source, request)

        endpoint.__name__ = source
        endpoint.__doc__ = doc
        app.post(
            f"/hooks/{source}",
            status_code=202,
            responses=responses(source),
            openapi_extra=_body_doc(source),
        )(endpoint)

    hook("alertmanager", "Prometheus Alertmanager webhook (v4); one incident per alert.")
    hook("grafana", "Grafana alerting webhook contact point; one incident per alert.")
    hook("pagerduty", "PagerDuty Events API v2; one incident per dedup_key.")
    hook("generic", "Any JSON alert with a `summary`; one incident per dedup_key (or body hash).")

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness and the store's state (no credentials needed)."""
        ok = await run_in_threadpool(store_ok)
        pending = await run_in_threadpool(dispatcher.pending) if dispatcher and ok else None
        # items the Prefect API refused for good: they need someone (see `ktlo incidents`)
        dead = await run_in_threadpool(count_outbox, OutboxStatus.DEAD) if ok else None
        return JSONResponse(
            status_code=200 if ok else 503,
            content={
                "status": "ok" if ok else "store unavailable",
                "outbox_pending": pending,
                "outbox_dead": dead,
            },
        )

    app.openapi = _with_payload_schemas(app)  # type: ignore[method-assign]
    guarded = Guard(app, token, settings.webhook_tolerance_s, settings.webhook_body_timeout_s)
    guarded.openapi = app.openapi  # type: ignore[attr-defined]
    return guarded
