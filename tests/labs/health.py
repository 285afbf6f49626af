"""A `/primary` health endpoint per PostgreSQL node, for HAProxy's `option httpchk`.

Why HTTP and not `option pgsql-check`: pgsql-check only proves the server answers a startup
packet, so HAProxy would route writes to replicas too; a `tcp-check` script speaking the wire
protocol could run `SELECT pg_is_in_recovery()` but breaks on any auth or protocol change.
This is Patroni's design: one small HTTP server that asks the node itself on every request.

One process serves every node of a lab, one port per node:
`python -m tests.labs.health 127.0.0.1:PORT=DSN ...`. Each request opens a fresh connection
(a dead or fenced node fails at once; nothing is cached) with a short timeout, so a hung node
reads as down. `GET /primary` → 200 only when the node is out of recovery and not read-only;
`GET /replica` → 200 when it is in recovery; `GET /health` → 200 when it answers at all.
The body is JSON: {"role": "primary"|"replica"|"unreachable", "error": ...}.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg

from tests.labs.procs import free_ports, listening, wait_until

REPO = Path(__file__).resolve().parents[2]

QUERY_TIMEOUT_S = 0.4
ROLE_SQL = "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')::bool"


async def node_role(dsn: str) -> tuple[str, str | None]:
    """('primary' | 'replica' | 'unreachable', error) as the node says right now."""
    try:
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                dsn, autocommit=True, application_name="lab-health", connect_timeout=2
            ),
            QUERY_TIMEOUT_S,
        )
    except (TimeoutError, psycopg.Error, OSError) as exc:
        return "unreachable", type(exc).__name__
    try:
        cur = await asyncio.wait_for(conn.execute(ROLE_SQL), QUERY_TIMEOUT_S)
        row = await cur.fetchone()
    except (TimeoutError, psycopg.Error, OSError) as exc:
        return "unreachable", type(exc).__name__
    finally:
        await conn.close()
    if row is None:
        return "unreachable", "no row"
    in_recovery, read_only = row
    if in_recovery:
        return "replica", None
    return ("replica" if read_only else "primary"), None


WANT = {"/primary": {"primary"}, "/replica": {"replica"}, "/health": {"primary", "replica"}}


def handler(dsn: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            parts = head.split(b"\r\n", 1)[0].split()
            path = parts[1].decode() if len(parts) > 1 else "/"
            role, error = await node_role(dsn)
            ok = role in WANT.get(path, set())
            body = json.dumps({"role": role, "error": error}).encode()
            status = b"200 OK" if ok else b"503 Service Unavailable"
            writer.write(
                b"HTTP/1.0 " + status + b"\r\nContent-Type: application/json\r\n"
                b"Content-Length: "
                + str(len(body)).encode()
                + b"\r\nConnection: close\r\n\r\n"
                + body
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle


async def serve(specs: list[str]) -> None:
    servers = []
    for spec in specs:
        listen, dsn = spec.split("=", 1)
        host, port = listen.rsplit(":", 1)
        servers.append(await asyncio.start_server(handler(dsn), host, int(port)))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def spawn(dsns: list[str], log: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """Start the endpoints for `dsns` in one child process; returns it and the check ports."""
    ports = free_ports(len(dsns))
    specs = [f"127.0.0.1:{p}={dsn}" for p, dsn in zip(ports, dsns, strict=True)]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.labs.health", *specs],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, ports


def wait_listening(
    proc: subprocess.Popen[bytes], ports: list[int], log: Path, timeout: float
) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"health endpoints exited: {log.read_text()[-1500:]}")
        return all(listening(p) for p in ports)

    wait_until(up, timeout, "the health endpoints")


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1:]))
