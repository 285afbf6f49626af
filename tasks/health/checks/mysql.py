"""`mysql`: whether MySQL/MariaDB accepts a connection, and what an optional query returns.

pymysql blocks, so the probe runs on the sweep's thread pool (`Prober.blocking`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator

from tasks.health.checks.base import Facts, strip_credentials
from tasks.health.checks.sql import SqlCheck
from tasks.health.facts import MAX_ROWS, elapsed_ms, query_facts

if TYPE_CHECKING:
    from tasks.health.prober import Prober


class MysqlCheck(SqlCheck):
    type: Literal["mysql"]
    dsn: str = Field(description="mysql://user:password@host:port/database")

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str) -> str:
        if "{{" not in value and not value.startswith(("mysql://", "mariadb://")):
            raise ValueError("dsn must look like mysql://user:password@host:3306/database")
        return value

    def target(self) -> str:
        return strip_credentials(self.dsn)

    async def probe(self, prober: Prober, facts: Facts) -> None:
        await prober.blocking(self._probe_blocking, facts)

    def _probe_blocking(self, facts: Facts) -> None:
        import pymysql

        url = urlsplit(self.dsn)
        started = time.perf_counter()
        try:
            conn = pymysql.connect(
                host=url.hostname or "127.0.0.1",
                port=url.port or 3306,
                user=unquote(url.username or "root"),
                password=unquote(url.password or ""),
                database=unquote(url.path.lstrip("/")) or None,
                connect_timeout=self.timeout_s,
                read_timeout=self.timeout_s,
                write_timeout=self.timeout_s,
                charset="utf8mb4",
            )
        except pymysql.err.OperationalError:
            facts["connected"] = False
            raise
        try:
            facts.update(connected=True, response_time_ms=elapsed_ms(started))
            if self.query:
                with conn.cursor() as cur:
                    affected = cur.execute(self.query)
                    rows = cur.fetchmany(MAX_ROWS) if cur.description else None
                    facts.update(query_facts(rows, affected, started))
        finally:
            conn.close()
