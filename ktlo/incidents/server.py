"""The receiver's HTTP server: uvicorn, with the connection limits uvicorn lacks.

uvicorn has no header-read timeout (a slowloris connection lives as long as it trickles
bytes) and its `limit_concurrency` answers 503 to every new request once idle connections
fill it. Here each connection must complete its request headers within a timeout (also
between keep-alive requests), the headers are capped in size, and at the connection limit
the oldest connection that is *not* serving a request gives way to the new one, so a
flood of idle connections cannot lock out a sender whose request arrives at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 64 * 1024


@dataclass
class Limits:
    """Per server: the limits, and the connections waiting for (or between) requests."""

    header_timeout_s: float
    max_connections: int
    max_header_bytes: int = MAX_HEADER_BYTES
    waiting: OrderedDict[Any, None] = field(default_factory=OrderedDict)

    @classmethod
    def from_settings(cls) -> Limits:
        from ktlo.settings import get_settings

        settings = get_settings()
        return cls(settings.webhook_header_timeout_s, settings.webhook_max_connections)


def _raw_reply(status: str, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header timeout, a header cap and a connection cap."""

    limits: ClassVar[Limits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._reading_headers = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._reading_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.limits.max_header_bytes:
                limit = self.limits.max_header_bytes
                self._refuse("431 Request Header Fields Too Large", f"headers over {limit} bytes")

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._cancel_timer()
        self.limits.waiting.pop(self, None)
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:
            self._await_headers()  # the next request on this connection gets the same time

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.limits.waiting.pop(self, None)
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        self._cancel_timer()
        self._reading_headers = True
        self._header_bytes = 0
        self.limits.waiting[self] = None
        self.limits.waiting.move_to_end(self)
        self._header_timer = self.loop.call_later(
            self.limits.header_timeout_s, self._headers_timed_out
        )

    def _cancel_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self._reading_headers or self.transport.is_closing():
            return
        if self._header_bytes:
            timeout = self.limits.header_timeout_s
            self._refuse(
                "408 Request Timeout", f"request headers not received within {timeout:g} s"
            )
        else:
            self._refuse_silently()  # an idle connection: nothing to answer

    def _refuse(self, status: str, detail: str) -> None:
        self._reading_headers = False
        self._cancel_timer()
        self.limits.waiting.pop(self, None)
        with contextlib.suppress(Exception):
            self.transport.write(_raw_reply(status, detail))
        self.transport.close()

    def _make_room(self) -> None:
        """At the limit: close the oldest connection not serving a request, else refuse."""
        for other in self.limits.waiting:
            if other is not self:
                other._evict()
                return
        self._refuse("503 Service Unavailable", "too many connections; retry")

    def _evict(self) -> None:
        if self._header_bytes:
            self._refuse("503 Service Unavailable", "too many connections; retry")
        else:  # idle between requests: closing is what keep-alive clients expect
            self._refuse_silently()

    def _refuse_silently(self) -> None:
        self._reading_headers = False
        self._cancel_timer()
        self.limits.waiting.pop(self, None)
        self.transport.close()


def make_server(
    app: Any, host: str, port: int, *, limits: Limits | None = None, handle_signals: bool = False
) -> Any:
    """A uvicorn server for the receiver. Without `handle_signals` its host process (`ktlo
    serve`, a test thread) owns signal handling."""
    import uvicorn

    protocol = type("GuardedHttp", (GuardedHttp,), {"limits": limits or Limits.from_settings()})

    class Embedded(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            yield

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        log_level="warning",
        lifespan="off",
        access_log=False,
    )
    return uvicorn.Server(config) if handle_signals else Embedded(config)
