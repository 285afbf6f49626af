"""What the SQL check types (postgres, mysql) share; not a check type itself.

Each connects with its `dsn`, which is all its default condition asks about, and may run a
`query`: its row count and the first column of its first row become facts (see
`tasks.health.facts.query_facts`).
"""

from __future__ import annotations

from tasks.health.checks.base import CONNECTION, CheckBase


class SqlCheck(CheckBase):
    type: str  # each SQL type narrows it to its Literal name (declared here to keep key order)
    dsn: str
    query: str | None = None

    PLACEHOLDERS = {**CONNECTION, "row_count": "number", "value": "any"}
    DEFAULT_CONDITIONS = ("connected == true",)
