"""`prefect server start`, with every write transaction of its SQLite database begun IMMEDIATE.

Prefect begins its write transactions DEFERRED. When one of them has read and another
connection of the same server (an API request, the task-run recorder, the event persister)
writes first, SQLite cannot upgrade it to a writer and fails it at once with "database is
locked" (SQLITE_BUSY_SNAPSHOT; `busy_timeout` does not apply to that case). The server answers
503 and Prefect's client sleeps two seconds before it tries again: measured here, one or two
such sleeps in most drills whose child runs start while other runs are busy. Begun IMMEDIATE, a
write transaction takes the write lock first and waits its turn under `busy_timeout` instead.
Reads that begin no transaction are unchanged, and so is a PostgreSQL-backed server.

    python -m ktlo.orchestration.prefect_server start --host 127.0.0.1 --port 4200
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any


def _immediate_writes() -> None:
    from prefect.server.database import configurations

    config = configurations.AioSqliteConfiguration

    @contextlib.asynccontextmanager
    async def begin_transaction(
        self: Any, session: Any, with_for_update: bool = False
    ) -> AsyncGenerator[Any, None]:
        token = configurations.SQLITE_BEGIN_MODE.set("IMMEDIATE")
        try:
            async with session.begin() as transaction:
                yield transaction
        finally:
            configurations.SQLITE_BEGIN_MODE.reset(token)

    config.begin_transaction = begin_transaction  # type: ignore[method-assign]


def main() -> None:
    import sys

    _immediate_writes()
    from prefect.cli import app

    sys.argv[1:1] = ["server"]
    app()


if __name__ == "__main__":
    main()
