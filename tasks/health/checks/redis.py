"""`redis`: whether Redis answers PING, and its reply to a command (default PING)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from tasks.health.checks.base import CONNECTION, CheckBase, Facts, strip_credentials
from tasks.health.facts import elapsed_ms, plain

if TYPE_CHECKING:
    from tasks.health.prober import Prober


class RedisCheck(CheckBase):
    type: Literal["redis"]
    url: str = Field(description="redis://[:password@]host:port/db or rediss://")
    command: list[str] = Field(default_factory=lambda: ["PING"], min_length=1)

    PLACEHOLDERS = {**CONNECTION, "value": "any"}
    DEFAULT_CONDITIONS = ("connected == true",)

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return value.split() if isinstance(value, str) else value

    def target(self) -> str:
        return strip_credentials(self.url)

    async def probe(self, prober: Prober, facts: Facts) -> None:
        import redis.asyncio as aredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeout

        client = aredis.Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout_s,
            socket_timeout=self.timeout_s,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),  # one attempt: the sweep's thresholds do the retrying
        )
        client.response_callbacks.clear()  # the server's reply as sent: PING → "PONG", not True
        started = time.perf_counter()
        try:
            try:
                await client.ping()
            except (RedisConnectionError, RedisTimeout):
                facts["connected"] = False
                raise
            facts.update(connected=True, response_time_ms=elapsed_ms(started))
            reply = await client.execute_command(*self.command)
            facts.update(value=plain(reply), response_time_ms=elapsed_ms(started))
        finally:
            await client.aclose()
