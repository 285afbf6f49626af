"""What `ktlo hosts list|check` do, as plain functions (the CLI only parses and renders)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ktlo.hosts.inventory import Connection, Host, load_inventory
from ktlo.hosts.record import audit_hosts
from ktlo.hosts.runner import CommandResult, HostRunner


def list_hosts() -> list[dict[str, Any]]:
    """The inventory's hosts, defaults applied (no secrets: only their names)."""
    return [
        {
            "name": h.name,
            "connection": str(h.connection),
            "address": h.address if h.connection is Connection.SSH else None,
            "port": h.port if h.connection is Connection.SSH else None,
            "user": h.user,
            "groups": list(h.groups),
            "env": sorted(h.env),
            "vars": h.vars,
        }
        for h in load_inventory().hosts.values()
    ]


async def _check_one(runner: HostRunner, host: Host, sudo: bool) -> dict[str, Any]:
    started = time.monotonic()
    problem = await runner.check(host)
    out: dict[str, Any] = {
        "name": host.name,
        "reachable": True,
        "host_key": "local" if host.connection is Connection.LOCAL else "ok",
        "sudo": None,
        "error": problem,
    }
    if problem is not None:
        out["reachable"] = not problem.startswith("unreachable")
        out["host_key"] = "refused" if problem.startswith("host key") else "unknown"
        out["latency_ms"] = None
        return out
    probe = await runner.run(host, "true", timeout_s=10)
    out["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    if not probe.ok:
        out["error"] = probe.summary()
    if sudo:
        done = await runner.run(host, "sudo -n true", timeout_s=10)
        out["sudo"] = done.ok
    return out


async def _check(selector: str, sudo: bool) -> list[dict[str, Any]]:
    hosts = load_inventory().select(selector)
    async with HostRunner(command_timeout_s=10) as runner:
        return list(await asyncio.gather(*(_check_one(runner, h, sudo) for h in hosts)))


def check_hosts(selector: str = "all", sudo: bool = False) -> list[dict[str, Any]]:
    """Reach every selected host: SSH handshake, host key, a command, optionally `sudo -n`."""
    rows = asyncio.run(_check(selector, sudo))
    audit_hosts(
        "host.check",
        [
            CommandResult(r["name"], 0 if r["error"] is None else None, "", "", 0.0, r["error"])
            for r in rows
        ],
        {"sudo": sudo},
    )
    return rows
