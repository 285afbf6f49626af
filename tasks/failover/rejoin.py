"""Rejoin (a node back as a streaming replica) and planned switchover (zero loss).

Rejoin: stop the node, CHECKPOINT the primary (pg_rewind before the new primary's first
checkpoint does nothing, SPEC §13), pg_rewind — or a fresh pg_basebackup when the rewind
fails — then write back the node's own settings (both copy the source's configuration),
recreate its slot on the primary, start it as a standby and wait until it streams.

Switchover: take the primary out of the router, stop it cleanly (walsenders send all of its
WAL first), wait until the target has received up to the old primary's shutdown checkpoint,
promote the target, route to it, repoint the others, rejoin the old primary.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from ktlo.errors import KtloError
from tasks.failover import hostops, ops, pg
from tasks.failover.failover import promote, remember
from tasks.failover.ops import Ctx
from tasks.failover.pg import Role
from tasks.failover.routers import RouterAction
from tasks.failover.timeline import Event, Timeline


async def the_primary(ctx: Ctx) -> str:
    states = await pg.cluster_state(ctx.cluster)
    primaries = [s.name for s in states.values() if s.role is Role.PRIMARY]
    if len(primaries) != 1:
        raise KtloError(f"cluster {ctx.name}: expected one primary, found {primaries or 'none'}")
    remember(ctx.name, states)
    return primaries[0]


async def streaming_from(ctx: Ctx, primary: str, node: str) -> bool:
    rows = await pg.execute(
        ctx.cluster.nodes[primary].dsn,
        "SELECT 1 FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
        (node,),
    )
    return bool(rows)


async def wait_streaming(ctx: Ctx, primary: str, node: str, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await streaming_from(ctx, primary, node):
            return True
        await asyncio.sleep(0.1)
    return False


async def rejoin(ctx: Ctx, node: str, primary: str | None = None) -> dict[str, Any]:
    """Bring `node` back as a streaming replica of the primary; returns the step output."""
    if node not in ctx.cluster.nodes:
        raise KtloError(
            f"cluster {ctx.name} has no node '{node}' (nodes: {', '.join(ctx.cluster.nodes)})"
        )
    t0 = time.monotonic()
    primary = primary or await the_primary(ctx)
    if node == primary:
        raise KtloError(f"{node} is the primary of {ctx.name}: nothing to rejoin")
    if await streaming_from(ctx, primary, node):
        ctx.did(f"{node} already streams from {primary}")
        await ops.route(ctx, node, RouterAction.ENABLE)
        return {
            "node": node,
            "primary": primary,
            "method": "none",
            "streaming": True,
            "seconds": 0.0,
        }
    cfg, source = ctx.cluster.nodes[node], ctx.cluster.nodes[primary]
    await ops.route(ctx, node, RouterAction.DISABLE)
    stopped = await hostops.stop(ctx.runner, cfg, "fast")
    if not stopped.ok:
        raise KtloError(f"{node}: could not stop it on {cfg.host}: {stopped.summary()}")
    await pg.execute(source.dsn, "CHECKPOINT", timeout_s=120)
    method = "rewind"
    done = await hostops.rewind(ctx.runner, cfg, source.dsn)
    if not done.ok:
        ctx.audit(
            "rewind_failed", node, output=(done.stdout + done.stderr)[-800:], error=done.error
        )
        ctx.did(
            f"pg_rewind of {node} failed ({_last_line(done.stdout + done.stderr)}): base backup"
        )
        method = "basebackup"
        done = await hostops.basebackup(ctx.runner, cfg, source.dsn)
        if not done.ok:
            raise KtloError(
                f"{node}: pg_basebackup failed: {_last_line(done.stdout + done.stderr) or done.error}"
            )
    ctx.did(f"{method} of {node} from {primary}")
    await pg.ensure_slot(source.dsn, node)
    settings = {"primary_conninfo": pg.conninfo(source.dsn, node), "primary_slot_name": node}
    wrote = await hostops.make_replica(ctx.runner, cfg, settings)
    if not wrote.ok:
        raise KtloError(f"{node}: could not write its settings: {wrote.summary()}")
    started = await hostops.start(ctx.runner, cfg)
    if not started.ok:
        raise KtloError(f"{node}: did not start: {_last_line(started.stdout) or started.summary()}")
    streaming = await wait_streaming(ctx, primary, node)
    if not streaming:
        raise KtloError(f"{node} started but is not streaming from {primary} after 30s")
    await ops.route(ctx, node, RouterAction.ENABLE)
    await ops.restore_sync(ctx, primary, wait_s=5)
    seconds = round(time.monotonic() - t0, 3)
    ctx.audit("rejoined", node, primary=primary, method=method, seconds=seconds)
    return {
        "node": node,
        "primary": primary,
        "method": method,
        "streaming": True,
        "seconds": seconds,
    }


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


async def final_lsn(ctx: Ctx, node: str) -> int | None:
    """The stopped node's latest checkpoint (pg_controldata), as a byte position."""
    done = await hostops.run(
        ctx.runner, ctx.cluster.nodes[node], 'LC_ALL=C "$B/pg_controldata" "$D"', 20
    )
    found = re.search(r"Latest checkpoint location:\s*([0-9A-F]+)/([0-9A-F]+)", done.stdout)
    if not done.ok or not found:
        return None
    return (int(found.group(1), 16) << 32) + int(found.group(2), 16)


async def switchover(ctx: Ctx, to: str, wait_s: float = 60) -> dict[str, Any]:
    """Planned switchover to `to` with zero loss, also in asynchronous clusters."""
    timeline = Timeline()
    timeline.mark(Event.DECIDED, detail=f"switchover to {to}")
    old = await the_primary(ctx)
    if to == old:
        return {
            "outcome": "healthy",
            "old_primary": old,
            "new_primary": to,
            "timeline": timeline.as_list(),
            "actions": ctx.actions,
        }
    states = await pg.cluster_state(ctx.cluster)
    if to not in states or states[to].role is not Role.REPLICA:
        raise KtloError(f"{to} is not a reachable replica of {ctx.name}")
    await ops.route(ctx, old, RouterAction.DISABLE)
    stopped = await hostops.stop(ctx.runner, ctx.cluster.nodes[old], "fast")
    if not stopped.ok:
        await ops.route(ctx, old, RouterAction.ENABLE)
        raise KtloError(f"{old} did not stop cleanly: {stopped.summary()} (router restored)")
    timeline.mark(Event.FENCED, detail=f"{old} stopped (fast)")
    end = await final_lsn(ctx, old)
    deadline = time.monotonic() + wait_s
    while True:
        got = (await pg.node_state(to, ctx.cluster.nodes[to].dsn, 2)).position
        if end is not None and got >= end:
            break
        if time.monotonic() > deadline:
            raise KtloError(
                f"{to} received {got} of {end} bytes in {wait_s:g}s: not promoted ({old} is stopped; start it or rejoin)"
            )
        await asyncio.sleep(0.05)
    await promote(ctx, to)
    timeline.mark(Event.PROMOTED)
    await ops.route(ctx, to, RouterAction.ENABLE)
    await ops.route(ctx, to, RouterAction.UP)
    if await ops.wait_routed(ctx, to):
        timeline.mark(Event.ROUTED)
    if await ops.write_probe(ctx, to):
        timeline.mark(Event.FIRST_WRITE_ACKNOWLEDGED)
    for other, state in states.items():
        if other not in (old, to) and state.role is Role.REPLICA:
            await ops.follow(ctx, other, to)
    rejoined = await rejoin(ctx, old, primary=to)
    remember(ctx.name, await pg.cluster_state(ctx.cluster))
    ctx.audit("switchover", to, old_primary=old, wait_lsn=end)
    return {
        "outcome": "switched_over",
        "old_primary": old,
        "new_primary": to,
        "rejoin": rejoined,
        "timeline": timeline.as_list(),
        "actions": ctx.actions,
    }
