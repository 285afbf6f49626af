"""`ktlo failover status` and the pg.status step: every cluster's roles, lag and router view.

The shape is SPEC §10's: {"clusters": [{"name", "primary", "nodes": [{"name", "role",
"reachable", "lag_bytes", ...}]}]}; a status also records the primary's WAL position, the
reference for the bytes a later promotion would lose.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ktlo.errors import KtloError
from tasks.failover import pg
from tasks.failover.failover import remember
from tasks.failover.model import ClusterConfig, load_clusters
from tasks.failover.routers import router_for


def lsn_text(value: int | None) -> str | None:
    return None if value is None else f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


async def cluster_status(name: str, cluster: ClusterConfig) -> dict[str, Any]:
    states = await pg.cluster_state(cluster)
    remember(name, states)
    router: dict[str, str] | None = None
    if cluster.router is not None:
        try:
            router = await router_for(cluster.router).states()
        except KtloError as exc:
            router = {"error": str(exc)}
    primaries = [s.name for s in states.values() if s.role is pg.Role.PRIMARY]
    nodes = [
        {
            "name": s.name,
            "role": str(s.role),
            "reachable": s.reachable,
            "lag_bytes": s.lag_bytes,
            "timeline": s.timeline,
            "lsn": lsn_text(s.position if s.reachable else None),
            "replay_lsn": lsn_text(s.replay_lsn),
            "receiver": s.receiver,
            "sync_state": s.sync_state,
            "router": (router or {}).get(cluster.router.server(s.name)) if cluster.router else None,
            "error": s.error,
        }
        for s in states.values()
    ]
    return {
        "cluster": name,
        "primary": primaries[0] if len(primaries) == 1 else None,
        "nodes": nodes,
        "router": router,
        **({"split_brain": primaries} if len(primaries) > 1 else {}),
    }


def status(names: list[str] | None = None) -> dict[str, Any]:
    """Every cluster (or the named ones), probed concurrently."""
    clusters = load_clusters().clusters
    wanted = names or list(clusters)
    unknown = [n for n in wanted if n not in clusters]
    if unknown:
        raise KtloError(
            f"unknown cluster(s): {', '.join(unknown)} (known: {', '.join(clusters) or 'none'})"
        )

    async def all_of() -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(cluster_status(n, clusters[n]) for n in wanted)))

    out = []
    for entry in asyncio.run(all_of()):
        name = entry.pop("cluster")
        out.append({"name": name, **entry})
    return {"clusters": out}
