"""`tcp`: whether a TCP connection to host:port opens, and how fast."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tasks.health.checks.base import CONNECTION, CheckBase, Facts
from tasks.health.facts import elapsed_ms

if TYPE_CHECKING:
    from tasks.health.prober import Prober


class TcpCheck(CheckBase):
    type: Literal["tcp"]
    host: str
    port: int = Field(ge=1, le=65535)

    PLACEHOLDERS = dict(CONNECTION)
    DEFAULT_CONDITIONS = ("connected == true",)

    def target(self) -> str:
        return f"{self.host}:{self.port}"

    async def probe(self, prober: Prober, facts: Facts) -> None:
        started = time.perf_counter()
        try:
            _reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            facts["connected"] = False
            raise
        facts.update(connected=True, response_time_ms=elapsed_ms(started))
        await close_stream(writer)


async def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close a connection, waiting at most a second for the peer."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 1)
