"""Building blocks shared by failover, switchover and rejoin: fence a node, switch the router,
repoint replicas, restore synchronous replication. Each action goes to the audit trail."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ktlo.errors import KtloError
from ktlo.hosts.runner import HostRunner
from ktlo.store import audit
from tasks.failover import hostops, pg
from tasks.failover.model import ClusterConfig, SyncPolicy
from tasks.failover.routers import Router, RouterAction, router_for

log = logging.getLogger("ktlo.failover")


@dataclass
class Ctx:
    """One cluster operation: its config, router, host runner, audit identity and log."""

    name: str
    cluster: ClusterConfig
    runner: HostRunner
    run_id: str | None = None
    logger: Any = log
    actions: list[str] = field(default_factory=list)

    @property
    def router(self) -> Router | None:
        spec = self.cluster.router
        return router_for(spec) if spec is not None else None

    def audit(self, event: str, subject: str, **details: Any) -> None:
        audit.record(
            f"failover.{event}", f"{self.name}/{subject}", details=details, run_id=self.run_id
        )

    def did(self, text: str) -> None:
        self.actions.append(text)
        self.logger.info("%s: %s", self.name, text)


async def route(ctx: Ctx, node: str, action: RouterAction) -> str | None:
    """Apply a router action to a node's server; the error text, or None when done."""
    router = ctx.router
    if router is None or ctx.cluster.router is None:
        return "no router configured"
    server = ctx.cluster.router.server(node)
    try:
        await router.apply(server, action)
    except KtloError as exc:
        ctx.audit("router_failed", node, action=str(action), error=str(exc))
        return str(exc)
    ctx.audit("router", node, action=str(action), server=server)
    ctx.did(f"router: {action} {server}")
    return None


async def wait_routed(ctx: Ctx, node: str, timeout_s: float = 10) -> bool:
    """Until the router reports the node's server UP (True) or the time is up (False)."""
    router, spec = ctx.router, ctx.cluster.router
    if router is None or spec is None:
        return True
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if (await router.states()).get(spec.server(node), "").startswith("UP"):
                return True
        except KtloError:
            pass
        await asyncio.sleep(0.02)
    return False


async def fence(
    ctx: Ctx, node: str, timeout_s: float = 8, mode: str = "immediate"
) -> dict[str, Any]:
    """Make `node` unable to take writes: out of the router at once, then stopped on its host
    (or the cluster's fence command). Unconfirmed when neither could be proven."""
    cfg = ctx.cluster.nodes[node]
    routed = asyncio.create_task(route(ctx, node, RouterAction.DISABLE))
    how, error = "", ""
    try:
        done = await asyncio.wait_for(hostops.stop(ctx.runner, cfg, mode), timeout_s)
        if done.ok:
            how = f"stopped on {cfg.host} ({mode})"
        else:
            error = (
                done.error or (done.stdout + done.stderr).strip()[-300:] or f"exit {done.exit_code}"
            )
    except TimeoutError:
        error = f"no answer from {cfg.host} in {timeout_s:g}s"
    if not how and ctx.cluster.fence_command is not None:
        done = await hostops.fence_command(ctx.runner, ctx.cluster.fence_command, node, cfg)
        if done.ok:
            how = "fence command succeeded"
        else:
            error += (
                f"; fence command: {done.error or done.stderr.strip()[-300:] or done.exit_code}"
            )
    router_error = await routed
    result = {
        "node": node,
        "confirmed": bool(how),
        "how": how or "unconfirmed",
        "error": error or None,
        "router": router_error or "disabled",
    }
    ctx.audit("fenced" if how else "fence_unconfirmed", node, **result)
    ctx.did(f"fence {node}: {how or 'UNCONFIRMED (' + error + ')'}")
    return result


async def follow(ctx: Ctx, node: str, primary: str) -> None:
    """Point a running replica at `primary` (slot there, conninfo here) with a reload."""
    nodes = ctx.cluster.nodes
    await pg.ensure_slot(nodes[primary].dsn, node)
    await pg.alter_system(
        nodes[node].dsn,
        {"primary_conninfo": pg.conninfo(nodes[primary].dsn, node), "primary_slot_name": node},
    )
    ctx.audit("follow", node, primary=primary)
    ctx.did(f"{node} follows {primary}")


def sync_names(ctx: Ctx, primary: str) -> str:
    others = [n for n in ctx.cluster.nodes if n != primary]
    return f"ANY 1 ({', '.join(others)})"


async def set_sync(ctx: Ctx, primary: str, on: bool = True) -> None:
    """Synchronous replication on (`ANY 1 (others)`) or off at the primary, audited."""
    names = sync_names(ctx, primary) if on else ""
    await pg.alter_system(ctx.cluster.nodes[primary].dsn, {"synchronous_standby_names": names})
    ctx.audit("synchronous_on" if on else "synchronous_degraded", primary, names=names)
    ctx.did(f"synchronous replication {'on' if on else 'OFF (degraded)'} at {primary}")


async def restore_sync(ctx: Ctx, primary: str, wait_s: float = 15) -> bool:
    """In synchronous clusters, turn synchronous replication back on once a standby streams
    (a primary with no standby would block every commit). False when none came in time.
    With `sync_policy: strict` it is turned on at once: writes wait for a standby."""
    if not ctx.cluster.synchronous:
        return True
    dsn = ctx.cluster.nodes[primary].dsn
    if ctx.cluster.sync_policy is SyncPolicy.STRICT:
        await set_sync(ctx, primary)
        return True
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        rows = await pg.execute(
            dsn, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        )
        if rows and rows[0][0] > 0:
            await set_sync(ctx, primary)
            return True
        await asyncio.sleep(0.1)
    ctx.audit("synchronous_degraded", primary, reason=f"no standby streaming after {wait_s:g}s")
    ctx.did(f"{primary} stays asynchronous: no standby streaming")
    return False


async def write_probe(ctx: Ctx, node: str, timeout_s: float = 10) -> bool:
    """A real write acknowledged through the router (or on the node without one):
    `txid_current()` assigns a transaction id, so it fails on a standby and commits (and waits
    for synchronous replication) on a primary, without touching any table."""
    dsn = (
        ctx.cluster.router.dsn
        if ctx.cluster.router and ctx.cluster.router.dsn
        else ctx.cluster.nodes[node].dsn
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            await pg.execute(dsn, "SELECT txid_current()", timeout_s=2)
            return True
        except Exception:  # any failure means "not yet"; retried until the deadline
            await asyncio.sleep(0.05)
    return False
