"""`http`: a request to a URL; the status, headers and (up to 1 MiB of) body it answers."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Literal

import httpx
from pydantic import Field

from ktlo import secrets
from ktlo.fields import HttpMethod, HttpUrl
from tasks.health.checks.base import CONNECTION, CheckBase, Facts, strip_credentials
from tasks.health.facts import elapsed_ms

if TYPE_CHECKING:
    from tasks.health.prober import Prober

MAX_BODY = 1024 * 1024


class HttpCheck(CheckBase):
    type: Literal["http"]
    url: HttpUrl
    method: HttpMethod = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    json_body: Any = Field(default=None, alias="json")
    verify_tls: bool = True
    follow_redirects: bool = True

    PLACEHOLDERS = {**CONNECTION, "status": "number", "body": "text", "headers": "map"}
    DEFAULT_CONDITIONS = ("status >= 200", "status < 300")

    def target(self) -> str:
        return f"{self.method} {strip_credentials(self.url)}"

    def hold(self, prober: Prober) -> AbstractAsyncContextManager[object]:
        return prober.http.lend(self.url, self.verify_tls)

    async def probe(self, prober: Prober, facts: Facts) -> None:
        client = prober.http.client()
        request = client.build_request(
            self.method,
            self.url,
            headers=self.headers,
            content=self.body,
            json=self.json_body if self.body is None else None,
            timeout=httpx.Timeout(self.timeout_s),
        )
        started = time.perf_counter()
        try:
            response = await client.send(
                request, stream=True, follow_redirects=self.follow_redirects
            )
        except httpx.ConnectError:
            facts["connected"] = False
            raise
        facts["connected"] = True
        try:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= MAX_BODY:
                    break
        finally:
            await response.aclose()
        facts.update(
            status=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=secrets.redact(bytes(body[:MAX_BODY]).decode(errors="replace")),
            response_time_ms=elapsed_ms(started),
        )
