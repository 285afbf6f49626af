"""The quick 503 retries of ktlo's Prefect client, against a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from ktlo.orchestration.client import QuickRetryTransport


class Flaky:
    """Answers 503 `failures` times, then 200 echoing the request body."""

    def __init__(self, failures: int, retry_after: str | None = None):
        self.failures = failures
        self.bodies: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.bodies.append(body)
                failing = len(outer.bodies) <= outer.failures
                self.send_response(503 if failing else 200)
                if failing and retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                payload = b"locked" if failing else body
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/api/x"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky(request: pytest.FixtureRequest) -> Iterator[Flaky]:
    server = Flaky(*request.param)
    yield server
    server.close()


async def _post(url: str, transport: QuickRetryTransport) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.post(url, json={"idempotency_key": "incident:1"})


@pytest.mark.parametrize("flaky", [(3,)], indirect=True)
def test_503s_are_retried_with_the_same_body(flaky: Flaky) -> None:
    transport = QuickRetryTransport()
    response = asyncio.run(_post(flaky.url, transport))
    assert response.status_code == 200
    assert transport.retried == 3
    assert len(flaky.bodies) == 4
    assert len(set(flaky.bodies)) == 1
    assert response.content == flaky.bodies[0]


@pytest.mark.parametrize("flaky", [(100,)], indirect=True)
def test_a_lasting_503_is_handed_back_after_the_last_attempt(flaky: Flaky) -> None:
    transport = QuickRetryTransport(attempts=4, first_delay_s=0.001)
    response = asyncio.run(_post(flaky.url, transport))
    assert response.status_code == 503
    assert len(flaky.bodies) == 4


@pytest.mark.parametrize("flaky", [(1, "3")], indirect=True)
def test_a_503_with_retry_after_is_left_to_prefects_client(flaky: Flaky) -> None:
    transport = QuickRetryTransport()
    response = asyncio.run(_post(flaky.url, transport))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "3"
    assert transport.retried == 0
