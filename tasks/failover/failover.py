"""Failover: find the cluster's state, decide, fence, promote, route, and leave evidence.

The decision, in order (under the cluster's lock, so one run acts per failure):
- one primary answering → healthy, nothing to do;
- two or more primaries (an old primary came back with its data) → the one on the newest
  timeline (then the furthest WAL) stays, the others are fenced: out of the router, stopped;
- no primary → the replica with the most WAL (received or replayed) is the candidate; if it is
  more than `max_lag_bytes` behind the last primary position ktlo saw (or that position is
  unknown in an asynchronous cluster), automatic promotion is refused and the bytes at risk
  reported, unless the caller accepts that loss (after an approval);
- otherwise: fence the old primary, clear synchronous_standby_names on the candidate, promote
  it, route to it, prove a write, repoint the other replicas, restore synchronous replication.
"""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Any

from tasks.failover import ops, pg, store
from tasks.failover.ops import Ctx
from tasks.failover.pg import NodeState, Role
from tasks.failover.routers import RouterAction
from tasks.failover.timeline import Event, Timeline


class Outcome(StrEnum):
    HEALTHY = "healthy"  # nothing to do
    FAILED_OVER = "failed_over"
    REFUSED = "refused"  # the best candidate would lose more than max_lag_bytes
    SPLIT_BRAIN_FENCED = "split_brain_fenced"
    BUSY = "busy"  # another run held the cluster's lock for the whole wait
    NO_CANDIDATE = "no_candidate"


def newest(states: list[NodeState]) -> NodeState:
    return max(states, key=lambda s: (s.timeline or 0, s.position))


def remember(name: str, states: dict[str, NodeState]) -> None:
    primaries = [s for s in states.values() if s.role is Role.PRIMARY]
    if len(primaries) == 1:
        p = primaries[0]
        store.remember_primary(name, p.name, p.position, p.timeline)


def bytes_at_risk(name: str, candidate: NodeState) -> tuple[int | None, str | None]:
    """(bytes the candidate lacks of the last primary position seen, old primary's name)."""
    last = store.last_primary(name)
    if last is None or (last.timeline or 0) < (candidate.timeline or 0):
        return None, last.primary if last else None
    return max(0, last.lsn - candidate.position), last.primary


async def failover(
    ctx: Ctx,
    *,
    observed_at: float | None = None,
    accept_loss_bytes: int = 0,
    lock_wait_s: float = 60,
) -> dict[str, Any]:
    """Run the decision above once; returns the step output (outcome, timeline, ...)."""
    timeline = Timeline()
    timeline.mark(Event.FAILURE_OBSERVED, observed_at)
    holder = f"{ctx.run_id or 'local'}:{uuid.uuid4().hex[:8]}"
    out: dict[str, Any] = {"cluster": ctx.name, "outcome": Outcome.BUSY, "bytes_at_risk": None}
    if not await store.lock(ctx.name, holder, lock_wait_s):
        ctx.did(f"cluster locked by {store.lock_holder(ctx.name)}: nothing done")
        return {**out, "timeline": timeline.as_list(), "actions": ctx.actions}
    try:
        out.update(await _decide_and_act(ctx, timeline, accept_loss_bytes))
    finally:
        store.unlock(ctx.name, holder)
    healthy = out["outcome"] == Outcome.HEALTHY
    out["timeline"] = [] if healthy else timeline.as_list()  # no failure: nothing to time
    out["actions"] = ctx.actions
    if not healthy:
        ctx.audit(
            "outcome",
            str(out.get("new_primary") or ""),
            **{k: v for k, v in out.items() if k != "actions"},
        )
    return out


async def _decide_and_act(
    ctx: Ctx, timeline: Timeline, accept_loss_bytes: int = 0
) -> dict[str, Any]:
    states = await pg.cluster_state(ctx.cluster)
    primaries = [s for s in states.values() if s.role is Role.PRIMARY]
    nodes = {n: s.as_dict() for n, s in states.items()}
    if len(primaries) == 1:
        remember(ctx.name, states)
        return {"outcome": Outcome.HEALTHY, "new_primary": primaries[0].name, "nodes": nodes}
    if len(primaries) > 1:
        keep = newest(primaries)
        timeline.mark(Event.DECIDED, detail=f"{len(primaries)} primaries: keep {keep.name}")
        fenced = [await ops.fence(ctx, p.name) for p in primaries if p is not keep]
        timeline.mark(Event.SPLIT_BRAIN_FENCED)
        ctx.audit("split_brain", keep.name, primaries=[p.name for p in primaries])
        return {
            "outcome": Outcome.SPLIT_BRAIN_FENCED,
            "new_primary": keep.name,
            "fenced": fenced,
            "nodes": nodes,
        }
    replicas = [s for s in states.values() if s.role is Role.REPLICA]
    if not replicas:
        return {"outcome": Outcome.NO_CANDIDATE, "nodes": nodes}
    candidate = newest(replicas)
    risk, old = bytes_at_risk(ctx.name, candidate)
    result: dict[str, Any] = {
        "candidate": candidate.name,
        "old_primary": old,
        "bytes_at_risk": risk,
        "nodes": nodes,
    }
    unknown = risk is None and not ctx.cluster.synchronous
    if unknown or (risk is not None and risk > ctx.cluster.max_lag_bytes):
        accepted = risk is not None and risk <= accept_loss_bytes
        if not accepted:
            why = "unknown (no primary position recorded)" if risk is None else f"{risk} bytes"
            timeline.mark(Event.REFUSED, detail=f"{candidate.name} would lose {why}")
            ctx.audit(
                "refused",
                candidate.name,
                bytes_at_risk=risk,
                max_lag_bytes=ctx.cluster.max_lag_bytes,
            )
            ctx.did(f"automatic promotion of {candidate.name} refused: {why} at risk")
            return {**result, "outcome": Outcome.REFUSED}
    timeline.mark(Event.DECIDED, detail=f"promote {candidate.name}")
    down = [n for n, s in states.items() if s.role is Role.UNREACHABLE]
    result["fenced"] = [await ops.fence(ctx, n) for n in down]
    timeline.mark(
        Event.FENCED, detail=", ".join(f"{f['node']}: {f['how']}" for f in result["fenced"])
    )
    await promote(ctx, candidate.name)
    timeline.mark(Event.PROMOTED)
    await ops.route(ctx, candidate.name, RouterAction.ENABLE)
    await ops.route(ctx, candidate.name, RouterAction.UP)
    if await ops.wait_routed(ctx, candidate.name):
        timeline.mark(Event.ROUTED)
    if await ops.write_probe(ctx, candidate.name):
        timeline.mark(Event.FIRST_WRITE_ACKNOWLEDGED)
    for other in replicas:
        if other is not candidate:
            await ops.follow(ctx, other.name, candidate.name)
    await ops.restore_sync(ctx, candidate.name)
    after = await pg.cluster_state(ctx.cluster)
    remember(ctx.name, after)
    result["new_primary"] = candidate.name
    result["outcome"] = Outcome.FAILED_OVER
    return result


async def promote(ctx: Ctx, node: str) -> float:
    """Clear synchronous_standby_names (a new primary without standbys would block every
    commit), then promote; returns the seconds pg_promote took."""
    dsn = ctx.cluster.nodes[node].dsn
    await pg.alter_system(dsn, {"synchronous_standby_names": ""})
    t0 = time.monotonic()
    took = await pg.promote(dsn)
    ctx.audit("promoted", node, seconds=round(took, 3))
    ctx.did(f"promoted {node} in {time.monotonic() - t0:.2f}s")
    return took
