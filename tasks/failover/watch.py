"""Detection inside the running flow: probe every node every `interval_s`, act at once.

Why in-process: a separate failover run costs a flow start (0.4-3 s against a running
server, SPEC §12) on top of detection; the watch already holds the connections' settings,
the host runner and the last primary position, so the decision starts on the probe that
completes the `fall` count. It still takes the cluster's lock, so a `pg-failover` run started
by an alert at the same time does nothing.

It records the primary's WAL position on every healthy probe (the bytes-at-risk reference),
fails over after `fall` missed probes in a row (the failure counts from the first miss), and
fences at once when two primaries answer (an old primary back with its data), and applies
the `degrade` policy for a lost synchronous standby. It returns after a refused promotion:
that needs a person (pg-failover with its approval).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tasks.failover import failover as fo
from tasks.failover import ops, pg, store
from tasks.failover.model import SyncPolicy
from tasks.failover.ops import Ctx
from tasks.failover.pg import NodeState, Role


async def keep_sync(ctx: Ctx, p: NodeState, alone_since: float | None, now: float) -> float | None:
    """The `degrade` policy: a synchronous primary left without a streaming standby for
    degrade_after_s drops synchronous replication (writes would block); it comes back on as
    soon as a standby streams again. Both audited. Returns the new `alone_since`."""
    cluster = ctx.cluster
    if not cluster.synchronous or cluster.sync_policy is not SyncPolicy.DEGRADE:
        return None
    if p.replicas:
        if not p.sync_names.strip():
            await ops.set_sync(ctx, p.name, on=True)
        return None
    if not p.sync_names.strip():
        return None
    alone_since = alone_since or now
    if now - alone_since >= cluster.degrade_after_s:
        await ops.set_sync(ctx, p.name, on=False)
        return None
    return alone_since


OnAction = Callable[[dict[str, Any]], Awaitable[None]]


async def watch(
    ctx: Ctx,
    *,
    interval_s: float = 0.2,
    fall: int = 2,
    duration_s: float = 0,
    max_failovers: int = 0,
    on_action: OnAction | None = None,
) -> int:
    """Watch until `duration_s` or `max_failovers` (0: no limit); returns the probes made."""
    start = time.monotonic()
    probes, acted, misses = 0, 0, 0
    first_miss: float | None = None
    alone_since: float | None = None  # the primary has had no streaming standby since
    while not duration_s or time.monotonic() - start < duration_s:
        tick = time.monotonic()
        states = await pg.cluster_state(ctx.cluster)
        probes += 1
        primaries = [s for s in states.values() if s.role is Role.PRIMARY]
        act_at: float | None = None
        if len(primaries) == 1:
            misses, first_miss = 0, None
            p = primaries[0]
            await asyncio.to_thread(
                store.remember_primary, ctx.name, p.name, p.position, p.timeline
            )
            alone_since = await keep_sync(ctx, p, alone_since, tick)
        elif len(primaries) > 1:
            act_at = tick
        else:
            misses += 1
            first_miss = first_miss or tick
            if misses >= fall:
                act_at = first_miss
        if act_at is not None:
            ctx.actions = []
            out = await fo.failover(ctx, observed_at=act_at)
            misses, first_miss = 0, None
            if out["outcome"] != fo.Outcome.HEALTHY:
                acted += 1
                if on_action is not None:
                    await on_action(out)
            if out["outcome"] == fo.Outcome.REFUSED:
                ctx.logger.warning("%s: promotion refused; watch ends (run pg-failover)", ctx.name)
                return probes
            if max_failovers and acted >= max_failovers:
                return probes
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - tick)))
    return probes
