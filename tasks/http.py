"""The `http.request` step: call an HTTP API and check the status code.

A URL whose scheme, host or port comes from incident or step data is refused unless its host
is in `allowed_hosts` (ktlo.runbook.rendering.AsUrl); when `allowed_hosts` is given, redirects must
stay among those hosts too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Literal

import httpx
from pydantic import Field, field_validator

from ktlo import tls
from ktlo.errors import StepFailed
from ktlo.runbook.rendering import host_allowed
from ktlo.steps.registry import StepInput, StepOutput, step_task
from ktlo.steps.renderings import AsUrl, Rendering

MAX_BODY = 256 * 1024
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class HttpInput(StepInput):
    method: Method = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, str | int | float | bool] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: str | None = None
    timeout_s: float = Field(default=30, gt=0)
    expect_status: list[int] | None = Field(default=None, description="default: any 2xx")
    verify_tls: bool = True
    follow_redirects: bool = True
    fail: bool = Field(
        default=True,
        description="false: record an unreachable endpoint or unexpected status in `error` instead of failing",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="hosts (or *.domain) the request may go to; required when the URL's host comes from incident or step data",
    )

    @classmethod
    def renderings(cls, raw: Mapping[str, Any]) -> Mapping[str, Rendering]:
        return {"url": AsUrl(allowed_hosts="allowed_hosts")}

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if "{{" in value:
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return value


class HttpOutput(StepOutput):
    status: int
    headers: dict[str, str]
    json_body: Any = Field(default=None, alias="json")
    text: str | None = None
    elapsed_ms: float
    error: str | None = None


def summarize(out: HttpOutput) -> str:
    if out.error:
        return out.error
    return f"HTTP {out.status} in {out.elapsed_ms:.0f} ms"


def _expected(status: int, expect: list[int] | None) -> bool:
    return 200 <= status < 300 if expect is None else status in expect


def _failed(inputs: HttpInput, started: float, message: str) -> HttpOutput:
    if inputs.fail:
        raise StepFailed(message)
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    return HttpOutput(status=0, headers={}, elapsed_ms=elapsed, error=message)


@step_task("http.request", HttpInput, HttpOutput, summarize=summarize)
async def http_request(inputs: HttpInput) -> HttpOutput:
    """Send one HTTP request; fail on an unexpected status code."""
    started = time.perf_counter()

    async def only_allowed(request: httpx.Request) -> None:
        if inputs.allowed_hosts and not host_allowed(request.url.host, inputs.allowed_hosts):
            raise StepFailed(
                f"{inputs.method} {request.url}: host '{request.url.host}' is not in "
                f"with.allowed_hosts ({', '.join(inputs.allowed_hosts)}); nothing was sent"
            )

    try:
        async with httpx.AsyncClient(
            verify=tls.client_context(inputs.verify_tls),
            follow_redirects=inputs.follow_redirects,
            timeout=inputs.timeout_s,
            event_hooks={"request": [only_allowed]},
        ) as client:
            response = await client.request(
                inputs.method,
                inputs.url,
                headers=inputs.headers,
                params=inputs.params or None,
                json=inputs.json_body if inputs.body is None else None,
                content=inputs.body,
            )
    except httpx.TimeoutException:
        return _failed(
            inputs, started, f"{inputs.method} {inputs.url}: timed out after {inputs.timeout_s:g}s"
        )
    except httpx.HTTPError as exc:
        return _failed(
            inputs, started, f"{inputs.method} {inputs.url}: {type(exc).__name__}: {exc}"
        )
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    content = response.content[:MAX_BODY]
    parsed: Any = None
    text: str | None = None
    if "json" in response.headers.get("content-type", ""):
        try:
            parsed = json.loads(content)
        except ValueError:
            text = content.decode(errors="replace")
    else:
        text = content.decode(errors="replace")
    out = HttpOutput(
        status=response.status_code,
        headers=dict(response.headers),
        json=parsed,
        text=text,
        elapsed_ms=elapsed,
    )
    if not _expected(response.status_code, inputs.expect_status):
        expected = (
            "2xx" if inputs.expect_status is None else ", ".join(map(str, inputs.expect_status))
        )
        snippet = (text or json.dumps(parsed) or "")[:200].replace("\n", " ")
        message = (
            f"{inputs.method} {inputs.url}: HTTP {response.status_code} (expected {expected})"
            + (f": {snippet}" if snippet else "")
        )
        if inputs.fail:
            raise StepFailed(message)
        out.error = message
    return out
