"""The incident receiver (SPEC §7): authenticated, size-limited, durable, and fast to answer.

A request is checked before any parsing by an ASGI guard: over 1 MiB → 413, missing or wrong
credentials → 401 (bearer token, or `X-Ktlo-Signature: sha256=<hex HMAC of the raw body>`,
compared in constant time). FastAPI then validates the body against the sender's model
(422 naming the field), the incidents and their outbox work are stored in one transaction,
and only then is 202 returned. Runs are started by the dispatcher after the response.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ktlo import __version__
from ktlo.dispatch import Dispatcher, store_ok
from ktlo.incidents import (
    AlertmanagerPayload,
    GenericPayload,
    GrafanaPayload,
    PagerDutyPayload,
    normalise,
)
from ktlo.intake import Ack, Intake, RunbookIndex

MAX_BODY = 1024 * 1024
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Accepted(BaseModel):
    accepted: int
    incidents: list[dict[str, Any]]


def _verify(token: str, headers: dict[str, str], body: bytes) -> bool:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer ") and hmac.compare_digest(
        auth[7:].strip().encode(), token.encode()
    ):
        return True
    signature = headers.get("x-ktlo-signature", "")
    if signature.startswith("sha256="):
        expected = hmac.new(token.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(signature[7:].strip().lower().encode(), expected.encode())
    return False


async def _reply(
    send: Send,
    status: int,
    detail: str,
    extra: dict[str, str] | None = None,
    body_override: dict[str, Any] | None = None,
) -> None:
    body = json.dumps(body_override or {"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """Size limit and authentication for POST /hooks/*, before the body is parsed."""

    def __init__(self, app: Any, token: str | None):
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/hooks/"):
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY:
            await _reply(send, 413, f"request body over {MAX_BODY} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                await _reply(send, 413, f"request body over {MAX_BODY} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if "json" not in headers.get("content-type", ""):
            # Senders that forget the header still send JSON: parse it as JSON (or 422).
            scope = dict(scope)
            scope["headers"] = [
                (k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"
            ] + [(b"content-type", b"application/json")]
        if self.token is not None and not _verify(self.token, headers, body):
            await _reply(
                send,
                401,
                "missing or wrong credentials: send Authorization: Bearer <token> or "
                "X-Ktlo-Signature: sha256=<HMAC-SHA256 of the body>",
                {"www-authenticate": "Bearer"},
            )
            return
        try:
            json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            detail = [
                {
                    "loc": ["body"],
                    "msg": f"the body is not valid JSON: {exc}",
                    "type": "json_invalid",
                }
            ]
            await _reply(send, 422, "", body_override={"detail": detail})
            return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _ack_json(acks: list[Ack]) -> dict[str, Any]:
    return {
        "accepted": len(acks),
        "incidents": [
            {"key": a.key, "id": a.id, "outcome": a.outcome, "runbooks": a.runbooks} for a in acks
        ],
    }


def create_app(
    token: str | None,
    *,
    dispatcher: Dispatcher | None = None,
    runbooks: RunbookIndex | None = None,
) -> Any:
    """The receiver as an ASGI app (guard around FastAPI). `token` None means no auth."""
    index = runbooks or (dispatcher.runbooks if dispatcher else RunbookIndex())
    intake = Intake()
    app = FastAPI(
        title="ktlo incident receiver",
        version=__version__,
        description="Alerts in; runbooks out. Every endpoint needs `Authorization: Bearer <token>` "
        "or `X-Ktlo-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.",
    )

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": list(e.get("loc", [])),
                "msg": e.get("msg", "invalid"),
                "type": e.get("type", "value_error"),
            }
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.exception_handler(Exception)
    async def unavailable(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            status_code=503,
            content={"detail": f"the ktlo store is not available: {type(exc).__name__}"},
        )

    async def accept(source: str, payload: BaseModel) -> JSONResponse:
        incidents = normalise(source, payload)
        acks = await intake.receive(incidents, index.runbooks())
        if dispatcher is not None:
            dispatcher.received()
        return JSONResponse(status_code=202, content=_ack_json(acks))

    responses: dict[int | str, dict[str, Any]] = {
        202: {"model": Accepted, "description": "stored; runs start after the response"},
        401: {"description": "missing or wrong credentials"},
        413: {"description": "body over 1 MiB"},
        422: {"description": "malformed body; `detail[].loc` names the field"},
    }

    @app.post("/hooks/alertmanager", status_code=202, responses=responses)
    async def alertmanager(payload: AlertmanagerPayload) -> JSONResponse:
        """Prometheus Alertmanager webhook (v4); one incident per alert, by fingerprint."""
        return await accept("alertmanager", payload)

    @app.post("/hooks/grafana", status_code=202, responses=responses)
    async def grafana(payload: GrafanaPayload) -> JSONResponse:
        """Grafana alerting webhook contact point; one incident per alert, by fingerprint."""
        return await accept("grafana", payload)

    @app.post("/hooks/pagerduty", status_code=202, responses=responses)
    async def pagerduty(payload: PagerDutyPayload) -> JSONResponse:
        """PagerDuty Events API v2; one incident per dedup_key."""
        return await accept("pagerduty", payload)

    @app.post("/hooks/generic", status_code=202, responses=responses)
    async def generic(payload: GenericPayload) -> JSONResponse:
        """Any JSON alert with a `summary`; one incident per dedup_key (or body hash)."""
        return await accept("generic", payload)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness and the store's state (no credentials needed)."""
        ok = await run_in_threadpool(store_ok)
        pending = await run_in_threadpool(dispatcher.pending) if dispatcher and ok else None
        return JSONResponse(
            status_code=200 if ok else 503,
            content={"status": "ok" if ok else "store unavailable", "outbox_pending": pending},
        )

    guarded = Guard(app, token)
    guarded.openapi = app.openapi  # type: ignore[attr-defined]
    return guarded


def make_server(app: Any, host: str, port: int) -> Any:
    """A uvicorn server that leaves signal handling to its host process (`ktlo serve`)."""
    import contextlib

    import uvicorn

    class Embedded(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", access_log=False
    )
    return Embedded(config)
