"""Helpers probes share to record facts: elapsed time and query results as JSON values."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

MAX_ROWS = 10_000  # rows a query probe fetches (it reports the count and the first value)


def elapsed_ms(started: float) -> float:
    """Milliseconds since `started` (a `time.perf_counter()` reading), to 0.1 ms."""
    return round((time.perf_counter() - started) * 1000, 1)


def plain(value: Any) -> Any:
    """A database value as a JSON-friendly one (conditions compare numbers and strings)."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value)


def query_facts(
    rows: Sequence[Sequence[Any]] | None, affected: int, started: float
) -> dict[str, Any]:
    """`row_count`, `value` (first column of the first row) and timing of a SQL query.

    `rows` is None for a statement that returns no rows; then `affected` is the row count.
    """
    return {
        "row_count": len(rows) if rows is not None else max(affected, 0),
        "value": plain(rows[0][0]) if rows and rows[0] else None,
        "response_time_ms": elapsed_ms(started),
    }
