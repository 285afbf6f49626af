"""Talking to the nodes over SQL: status of every node at once, promote, checkpoint, settings.

Every connection has a short connect timeout and every query a statement timeout, so a hung
node reads as unreachable within about a second instead of stalling the failover.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql

from tasks.failover.model import ClusterConfig

STATUS_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() - '0/0' END,
       pg_last_wal_receive_lsn() - '0/0', pg_last_wal_replay_lsn() - '0/0',
       CASE WHEN pg_is_in_recovery()
            THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END,
       (SELECT status FROM pg_stat_wal_receiver),
       current_setting('synchronous_standby_names')
"""
REPLICATION_SQL = "SELECT application_name, state, sync_state FROM pg_stat_replication"


class Role(StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"
    UNREACHABLE = "unreachable"


@dataclass
class NodeState:
    name: str
    role: Role
    reachable: bool
    timeline: int | None = None
    lsn: int | None = None  # current WAL position (primary) or replayed position (replica)
    receive_lsn: int | None = None
    replay_lsn: int | None = None
    receiver: str | None = None  # walreceiver status on a replica ("streaming")
    sync_state: str | None = None  # as the primary's pg_stat_replication reports this node
    lag_bytes: int | None = None
    error: str | None = None
    replicas: dict[str, str] = field(default_factory=dict)  # on a primary: name → sync_state
    sync_names: str = ""  # synchronous_standby_names in effect

    @property
    def position(self) -> int:
        """WAL this node will have once promoted: what it received or replayed, whichever is more."""
        return max(self.receive_lsn or 0, self.replay_lsn or 0, self.lsn or 0)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["role"] = str(self.role)
        return out


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


async def connect(dsn: str, timeout_s: float) -> psycopg.AsyncConnection[Any]:
    return await asyncio.wait_for(
        psycopg.AsyncConnection.connect(
            dsn,
            autocommit=True,
            connect_timeout=max(1, int(timeout_s)),
            application_name="ktlo-failover",
            options=f"-c statement_timeout={int(timeout_s * 1000) + 500}",
        ),
        timeout_s + 0.5,
    )


async def execute(
    dsn: str, query: str | sql.Composed, params: tuple[Any, ...] = (), timeout_s: float = 5
) -> list[tuple[Any, ...]]:
    conn = await connect(dsn, timeout_s)
    try:
        cur = await conn.execute(query, params)
        return list(await cur.fetchall()) if cur.description else []
    finally:
        await conn.close()


async def node_state(name: str, dsn: str, timeout_s: float) -> NodeState:
    try:
        conn = await connect(dsn, timeout_s)
    except (psycopg.Error, OSError, TimeoutError) as exc:
        return NodeState(name, Role.UNREACHABLE, False, error=_first_line(exc))
    try:
        cur = await conn.execute(STATUS_SQL)
        row = await cur.fetchone()
        assert row is not None
        in_recovery, current, received, replayed, tli, receiver, sync_names = row
        state = NodeState(
            name,
            Role.REPLICA if in_recovery else Role.PRIMARY,
            True,
            timeline=tli,
            lsn=int(replayed or received or 0) if in_recovery else int(current),
            receive_lsn=int(received) if received is not None else None,
            replay_lsn=int(replayed) if replayed is not None else None,
            receiver=receiver,
            sync_names=sync_names,
        )
        if not in_recovery:
            cur = await conn.execute(REPLICATION_SQL)
            state.replicas = {r[0]: r[2] for r in await cur.fetchall() if r[1] == "streaming"}
        return state
    except (psycopg.Error, OSError, TimeoutError) as exc:
        return NodeState(name, Role.UNREACHABLE, False, error=_first_line(exc))
    finally:
        await conn.close()


async def cluster_state(cluster: ClusterConfig) -> dict[str, NodeState]:
    """Every node probed concurrently; lag is measured against the newest primary position."""
    names = list(cluster.nodes)
    states = await asyncio.gather(
        *(node_state(n, cluster.nodes[n].dsn, cluster.connect_timeout_s) for n in names)
    )
    out = dict(zip(names, states, strict=True))
    primaries = [s for s in out.values() if s.role is Role.PRIMARY]
    head = max((p.lsn or 0 for p in primaries), default=None)
    for p in primaries:
        for replica, sync in p.replicas.items():
            if replica in out and out[replica].role is Role.REPLICA:
                out[replica].sync_state = sync
    for s in out.values():
        if head is not None and s.role is Role.REPLICA:
            s.lag_bytes = max(0, head - s.position)
        elif s.role is Role.PRIMARY:
            s.lag_bytes = 0
    return out


async def promote(dsn: str, timeout_s: float = 30) -> float:
    """`pg_promote(false)`, then poll until out of recovery, reloading the configuration while
    waiting: right after the primary dies the startup process can sleep 5 s before it sees the
    promote request, and a reload wakes it (SPEC §13). Returns seconds taken."""
    t0 = time.monotonic()
    await execute(dsn, "SELECT pg_promote(false)")
    deadline = t0 + timeout_s
    while time.monotonic() < deadline:
        rows = await execute(dsn, "SELECT pg_is_in_recovery()")
        if rows == [(False,)]:
            return time.monotonic() - t0
        await execute(dsn, "SELECT pg_reload_conf()")
        await asyncio.sleep(0.05)
    raise TimeoutError(f"still in recovery {timeout_s:g}s after pg_promote")


async def alter_system(dsn: str, settings: dict[str, str | None], reload: bool = True) -> None:
    """ALTER SYSTEM SET (or RESET for None) each setting, then reload."""
    conn = await connect(dsn, 5)
    try:
        for key, value in settings.items():
            if value is None:
                await conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(key)))
            else:
                await conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(key), sql.Literal(value)
                    )
                )
        if reload:
            await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def ensure_slot(dsn: str, slot: str) -> None:
    await execute(
        dsn,
        "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS"
        " (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
        (slot, slot),
    )


def conninfo(primary_dsn: str, node: str) -> str:
    """primary_conninfo for `node` following the primary (application_name = node name, so
    synchronous_standby_names can list nodes by name)."""
    return f"{primary_dsn} application_name={node}"
