"""Failover step types: pg.status, pg.failover, pg.fence, pg.promote, pg.rejoin, pg.switchover,
pg.watch, and the generic router.disable / router.enable / router.drain / router.status.

Every pg.* step names a cluster from clusters.yaml (KTLO_CLUSTERS); a missing file or cluster
is a one-line step failure, so the shipped runbooks validate on machines without one.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prefect import get_run_logger
from pydantic import Field

from ktlo import secrets
from ktlo.hosts.runner import HostRunner
from ktlo.steps.context import StepContext, flow_client, get_step_context
from ktlo.steps.registry import StepInput, StepOutput, step_task
from ktlo.store import audit
from tasks.failover import failover as fo
from tasks.failover import ops, rejoin, watch
from tasks.failover.commands import cluster_status
from tasks.failover.model import get_cluster
from tasks.failover.routers import RouterAction, RouterSpec, router_for


class ClusterInput(StepInput):
    cluster: str = Field(min_length=1, description="a cluster in clusters.yaml")


class NodeInput(ClusterInput):
    node: str = Field(min_length=1)


class FailoverInput(ClusterInput):
    accept_loss_bytes: int = Field(
        default=0, ge=0, description="promote even if this many bytes are lost (after approval)"
    )
    lock_wait_s: float = Field(default=60, ge=0, description="wait this long for another run")


class SwitchoverInput(ClusterInput):
    to: str = Field(min_length=1, description="the replica to promote")
    wait_s: float = Field(default=60, gt=0, description="for it to receive all of the WAL")


class WatchInput(ClusterInput):
    interval_s: float = Field(default=0.2, gt=0, le=60, description="probe every node this often")
    fall: int = Field(default=2, ge=1, le=100, description="failed probes in a row = primary down")
    duration_s: float = Field(default=0, ge=0, description="stop after this long (0: never)")
    max_failovers: int = Field(default=0, ge=0, description="stop after this many (0: never)")


class ResultOutput(StepOutput):
    """What a cluster step did; `timeline` and `actions` are the evidence."""

    cluster: str
    outcome: str
    detail: dict[str, Any] = Field(default_factory=dict)
    timeline: list[dict[str, Any]] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)
    bytes_at_risk: int | None = None
    candidate: str | None = None
    new_primary: str | None = None


class StatusOutput(StepOutput):
    cluster: str
    primary: str | None
    nodes: list[dict[str, Any]]
    router: dict[str, str] | None = None
    split_brain: list[str] | None = None


@asynccontextmanager
async def _ctx(cluster: str) -> AsyncIterator[ops.Ctx]:
    config = get_cluster(cluster)
    step = get_step_context()
    async with HostRunner() as runner:
        yield ops.Ctx(
            cluster,
            config,
            runner,
            run_id=step.run_id if step else None,
            logger=get_run_logger(),
        )


def _output(cluster: str, out: dict[str, Any]) -> ResultOutput:
    known = {
        "outcome",
        "timeline",
        "actions",
        "bytes_at_risk",
        "candidate",
        "new_primary",
        "cluster",
    }
    return ResultOutput(
        cluster=cluster,
        outcome=str(out.get("outcome", "")),
        timeline=out.get("timeline", []),
        actions=out.get("actions", []),
        bytes_at_risk=out.get("bytes_at_risk"),
        candidate=out.get("candidate"),
        new_primary=out.get("new_primary"),
        detail={k: v for k, v in out.items() if k not in known},
    )


async def _publish(kind: str, out: ResultOutput) -> None:
    """The timeline as a table artifact on the flow run (a view: never fails the step)."""
    if not out.timeline:
        return
    from prefect.artifacts import TableArtifact

    step = get_step_context()
    key = re.sub(r"[^a-z0-9-]+", "-", f"{kind}-{out.cluster}".lower())[:100]
    try:
        await TableArtifact(
            table=secrets.redact(out.timeline),
            key=key,
            description=f"{kind} of {out.cluster}: {out.outcome}"
            + (f", {out.bytes_at_risk} bytes at risk" if out.bytes_at_risk else "")
            + (f" ({step.runbook}/{step.step_id})" if step else ""),
        ).acreate(client=flow_client())
    except Exception as exc:
        get_run_logger().warning("could not publish the failover artifact: %s", exc)


def _summary(out: ResultOutput) -> str:
    took = next((e["t_s"] for e in out.timeline if e["event"] == "first_write_acknowledged"), None)
    text = f"{out.cluster}: {out.outcome}"
    if out.new_primary:
        text += f", primary {out.new_primary}"
    if out.bytes_at_risk:
        text += f", {out.bytes_at_risk} bytes at risk"
    return text + (f", first write {took}s after the failure" if took is not None else "")


@step_task("pg.status", ClusterInput, StatusOutput)
async def pg_status(inputs: ClusterInput) -> StatusOutput:
    """Each node's role, timeline, WAL positions, lag and sync state, and the router's view."""
    status = await cluster_status(inputs.cluster, get_cluster(inputs.cluster))
    return StatusOutput(**status)


@step_task("pg.failover", FailoverInput, ResultOutput, summarize=_summary)
async def pg_failover(inputs: FailoverInput) -> ResultOutput:
    """Fail over if the primary is gone (fence, promote, route); nothing when healthy.

    Refuses (outcome `refused`, bytes at risk given) when the best replica is more than
    max_lag_bytes behind, unless `accept_loss_bytes` covers it.
    """
    async with _ctx(inputs.cluster) as ctx:
        raw = await fo.failover(
            ctx, accept_loss_bytes=inputs.accept_loss_bytes, lock_wait_s=inputs.lock_wait_s
        )
    out = _output(inputs.cluster, raw)
    await _publish("failover", out)
    return out


@step_task("pg.fence", NodeInput, ResultOutput)
async def pg_fence(inputs: NodeInput) -> ResultOutput:
    """Take a node out of the router and stop it on its host (or run the fence command)."""
    async with _ctx(inputs.cluster) as ctx:
        result = await ops.fence(ctx, inputs.node)
    outcome = "fenced" if result["confirmed"] else "fence_unconfirmed"
    return ResultOutput(cluster=inputs.cluster, outcome=outcome, detail=result, actions=ctx.actions)


@step_task("pg.promote", NodeInput, ResultOutput)
async def pg_promote(inputs: NodeInput) -> ResultOutput:
    """Promote one replica by hand (fence the old primary first) and route to it."""
    async with _ctx(inputs.cluster) as ctx:
        await fo.promote(ctx, inputs.node)
        await ops.route(ctx, inputs.node, RouterAction.ENABLE)
        await ops.route(ctx, inputs.node, RouterAction.UP)
        await ops.restore_sync(ctx, inputs.node, wait_s=5)
    return ResultOutput(
        cluster=inputs.cluster, outcome="promoted", new_primary=inputs.node, actions=ctx.actions
    )


@step_task("pg.rejoin", NodeInput, ResultOutput)
async def pg_rejoin(inputs: NodeInput) -> ResultOutput:
    """pg_rewind (or pg_basebackup) a node, re-apply its own settings, start it streaming."""
    async with _ctx(inputs.cluster) as ctx:
        result = await rejoin.rejoin(ctx, inputs.node)
    return ResultOutput(
        cluster=inputs.cluster, outcome="rejoined", detail=result, actions=ctx.actions
    )


@step_task("pg.switchover", SwitchoverInput, ResultOutput, summarize=_summary)
async def pg_switchover(inputs: SwitchoverInput) -> ResultOutput:
    """Planned switchover with zero loss: stop the primary cleanly, promote, rejoin it."""
    async with _ctx(inputs.cluster) as ctx:
        raw = await rejoin.switchover(ctx, inputs.to, inputs.wait_s)
    out = _output(inputs.cluster, raw)
    await _publish("switchover", out)
    return out


class WatchOutput(StepOutput):
    cluster: str
    probes: int
    failovers: list[ResultOutput]


@step_task("pg.watch", WatchInput, WatchOutput)
async def pg_watch(inputs: WatchInput) -> WatchOutput:
    """Probe every node every interval_s; fail over in-process when the primary misses `fall`
    probes in a row, fence at once when two primaries appear (see docs/failover.md)."""
    results: list[ResultOutput] = []
    async with _ctx(inputs.cluster) as ctx:

        async def acted(raw: dict[str, Any]) -> None:
            out = _output(inputs.cluster, raw)
            results.append(out)
            await _publish("failover", out)

        probes = await watch.watch(
            ctx,
            interval_s=inputs.interval_s,
            fall=inputs.fall,
            duration_s=inputs.duration_s,
            max_failovers=inputs.max_failovers,
            on_action=acted,
        )
    return WatchOutput(cluster=inputs.cluster, probes=probes, failovers=results)


class RouterInput(RouterSpec, StepInput):
    server: str = Field(min_length=1, description="the server's name in the backend")


class RouterStatusInput(RouterSpec, StepInput):
    pass


class RouterOutput(StepOutput):
    server: str | None = None
    action: str | None = None
    states: dict[str, str]


_NO_STEP = StepContext(run_id="", runbook="", step_id="")


def _router_step(action: RouterAction) -> None:
    async def apply(inputs: RouterInput) -> RouterOutput:
        router = router_for(RouterSpec(**inputs.model_dump(exclude={"server"})))
        await router.apply(inputs.server, action)
        audit.record(
            f"router.{action}",
            f"{inputs.backend}/{inputs.server}",
            details={"kind": inputs.kind, "socket": inputs.socket},
            run_id=(get_step_context() or _NO_STEP).run_id,
        )
        return RouterOutput(server=inputs.server, action=str(action), states=await router.states())

    apply.__doc__ = f"{action.capitalize()} one server of a router's backend (any service)."
    apply.__name__ = apply.__qualname__ = f"router_{action}"
    step_task(f"router.{action}", RouterInput, RouterOutput)(apply)


for _action in (RouterAction.DISABLE, RouterAction.ENABLE, RouterAction.DRAIN):
    _router_step(_action)


@step_task("router.status", RouterStatusInput, RouterOutput)
async def router_status(inputs: RouterStatusInput) -> RouterOutput:
    """Every server of the backend and its state as the router reports it."""
    return RouterOutput(states=await router_for(RouterSpec(**inputs.model_dump())).states())
