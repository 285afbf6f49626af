"""A Prefect client for latency-critical calls: 503s are retried after milliseconds, not seconds.

A SQLite-backed Prefect server answers 503 when a write meets "database is locked" (a
deferred transaction that cannot upgrade, which SQLite's busy timeout does not wait out),
and Prefect's client retries a 503 after 2, 4, 8 s. With runs in flight such 503s are
common, so creating an incident's flow run took ~2 s instead of ~40 ms. This transport
retries them itself, after a few jittered milliseconds; the request is the same request
(creates carry idempotency keys), so the retry is as safe as Prefect's own.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx

RETRY_STATUS = 503
ATTEMPTS = 8  # 10 ms doubling: ~2.5 s in all before Prefect's own backoff takes over
FIRST_DELAY_S = 0.01


class QuickRetryTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        inner: httpx.AsyncBaseTransport | None = None,
        attempts: int = ATTEMPTS,
        first_delay_s: float = FIRST_DELAY_S,
    ):
        self.inner = inner or httpx.AsyncHTTPTransport(retries=3)
        self.attempts = max(1, attempts)
        self.first_delay_s = first_delay_s
        self.retried = 0  # 503s absorbed, for tests and diagnostics

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        delay = self.first_delay_s
        for _ in range(self.attempts - 1):
            response = await self.inner.handle_async_request(request)
            if response.status_code != RETRY_STATUS or response.headers.get("Retry-After"):
                return response
            await response.aclose()
            self.retried += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 - jitter
            delay *= 2
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def quick_client() -> Any:
    """`prefect.get_client()` with the quick 503 retries (use it as an async context manager)."""
    from prefect.client.orchestration import get_client

    return get_client(httpx_settings={"transport": QuickRetryTransport()})
