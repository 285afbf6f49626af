"""The dashboard's HTTP endpoints, mounted on the webhook receiver's FastAPI app.

`/status`, `/api/status` and the badges are public (names, states and uptime only);
`/dashboard` and `/api/dashboard` need the receiver's token or the read-only
`KTLO_DASHBOARD_TOKEN`, as `Authorization: Bearer <token>` or as the password of HTTP Basic
(any user name), so a browser can prompt for it.
Every page is gathered afresh per request, off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from ktlo.app.dashboard import checks, pages, render, svg
from ktlo.app.dashboard.model import Check, Page, PublicPage
from ktlo.store.models import utcnow

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
CHALLENGE = {
    "WWW-Authenticate": 'Basic realm="ktlo dashboard"'
}  # a browser prompts; Bearer works too
SVG = "image/svg+xml"


def presented(request: Request) -> str | None:
    """The token a request carries: a bearer token, or the password of HTTP Basic."""
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


def _authorize(tokens: list[str], request: Request) -> None:
    if not tokens:  # `ktlo serve --insecure-no-auth` and no dashboard token
        return
    given = (presented(request) or "").encode()
    # compare with every token, always: the time taken does not tell which one was close
    matches = [hmac.compare_digest(given, t.encode()) for t in tokens]
    if not given or not any(matches):
        detail = "missing or wrong token: send Authorization: Bearer <token>"
        raise HTTPException(status_code=401, detail=detail, headers=CHALLENGE)


def _svg(body: str) -> Response:
    return Response(body, media_type=SVG, headers=HEADERS)


async def _check(ref: str) -> Check:
    found = checks.find(await run_in_threadpool(checks.gather, utcnow()), ref)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no check named {ref!r}")
    if isinstance(found, list):
        keys = ", ".join(c.key for c in found)
        raise HTTPException(status_code=404, detail=f"{ref!r} is ambiguous: use one of {keys}")
    return found


def mount(app: FastAPI, token: str | None) -> None:
    """Add the dashboard's routes to `app` (the receiver's FastAPI app); `token` is the
    receiver's (None: `--insecure-no-auth`)."""
    from ktlo.settings import get_settings

    read = get_settings().dashboard_token
    tokens = [t for t in (token, read.get_secret_value() if read else None) if t]
    badge_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {SVG: {}}, "description": "an SVG badge"},
        404: {"description": "no such check, or the name is ambiguous"},
    }

    @app.get("/status", response_class=HTMLResponse, tags=["dashboard"])
    async def status_page() -> HTMLResponse:
        """The public status page: checks grouped by runbook, names, states and uptime."""
        page = await run_in_threadpool(pages.public_page)
        return HTMLResponse(render.public_html(page), headers=HEADERS)

    @app.get("/api/status", response_model=PublicPage, tags=["dashboard"])
    async def status_json() -> PublicPage:
        """What /status shows, as JSON."""
        return await run_in_threadpool(pages.public_page)

    @app.get(
        "/dashboard",
        response_class=HTMLResponse,
        tags=["dashboard"],
        responses={401: {"description": "missing or wrong token"}},
    )
    async def dashboard_page(request: Request) -> HTMLResponse:
        """The operator view: checks with targets and errors, backups, incidents."""
        _authorize(tokens, request)
        page = await run_in_threadpool(pages.operator_page)
        return HTMLResponse(render.operator_html(page), headers=HEADERS)

    @app.get(
        "/api/dashboard",
        response_model=Page,
        tags=["dashboard"],
        responses={401: {"description": "missing or wrong token"}},
    )
    async def dashboard_json(request: Request) -> Page:
        """What /dashboard shows, as JSON."""
        _authorize(tokens, request)
        return await run_in_threadpool(pages.operator_page)

    @app.get("/badges/{check:path}/uptime-7d.svg", tags=["dashboard"], responses=badge_responses)
    async def uptime_badge(check: str) -> Response:
        """Uptime over the last 7 days (UTC days, today included), by check name or key."""
        found = await _check(check)
        pct = found.uptime.d7
        return _svg(svg.badge("uptime 7d", render.percent(pct), svg.uptime_colour(pct)))

    @app.get("/badges/{check:path}/state.svg", tags=["dashboard"], responses=badge_responses)
    async def state_badge(check: str) -> Response:
        """The check's current state, by check name or key."""
        found = await _check(check)
        return _svg(svg.badge(found.name, found.state, svg.STATE_COLOURS[found.state]))
