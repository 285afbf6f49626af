"""`postgres`: whether PostgreSQL accepts a connection, and what an optional query returns."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tasks.health.checks.base import Facts, strip_credentials
from tasks.health.checks.sql import SqlCheck
from tasks.health.facts import MAX_ROWS, elapsed_ms, query_facts

if TYPE_CHECKING:
    from tasks.health.prober import Prober


class PostgresCheck(SqlCheck):
    type: Literal["postgres"]
    dsn: str = Field(description="libpq URL or key=value string; use secret() for passwords")

    def target(self) -> str:
        if "://" in self.dsn:
            return strip_credentials(self.dsn)
        from psycopg.conninfo import conninfo_to_dict

        try:
            info = conninfo_to_dict(self.dsn)
        except Exception:
            return "postgres"
        return (
            f"postgresql://{info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        )

    async def probe(self, prober: Prober, facts: Facts) -> None:
        import psycopg

        started = time.perf_counter()
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.dsn,
                connect_timeout=max(2, math.ceil(self.timeout_s)),
                autocommit=True,
                application_name="ktlo-health",
            )
        except psycopg.OperationalError:
            facts["connected"] = False
            raise
        try:
            facts.update(connected=True, response_time_ms=elapsed_ms(started))
            if self.query:
                cur = await conn.execute(self.query.encode())
                rows = await cur.fetchmany(MAX_ROWS) if cur.description else None
                facts.update(query_facts(rows, cur.rowcount, started))
        finally:
            await conn.close()
