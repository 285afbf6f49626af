"""The lab's floor for the patching benchmark: a bare asyncssh script doing only the work.

Per host, over one asyncssh connection (strict host-key checking, the lab's client key): the
simulation (`apt-get -s dist-upgrade`), the install of the same `name=version` list and the
health command, each host's three commands one after the other; hosts of a batch at once,
batches as the rollout's. Nothing is checked, recorded, audited or timed out: it is what
every tool pays on this lab (sshd logins and sessions, apt's solve, dpkg's unpack), so `ansible / script` is about the most a tool doing this work can be ahead
of Ansible here, and `ktlo / script` is what ktlo adds on top (Prefect, the store, its plan
checks and rescans).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh


def _commands(env: dict[str, str], install: str) -> list[str]:
    from ktlo.hosts.runner import export_env  # imports Prefect: not before the session

    exports = export_env(env)
    return [
        exports + "LC_ALL=C apt-get -s -q -o Debug::NoLocking=1 dist-upgrade >/dev/null",
        exports + "DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l " + install + " >/dev/null",
        exports + "lab-health >/dev/null",
    ]


async def _host(fleet: Any, name: str, install: str) -> None:
    host = fleet.hosts[name]
    async with asyncssh.connect(
        "127.0.0.1",
        port=host.port,
        username=fleet.user.name,
        client_keys=[str(fleet.client_key)],
        known_hosts=str(fleet.known_hosts),
    ) as conn:
        for command in _commands(host.env, install):
            done = await conn.run(command, stdin=asyncssh.DEVNULL)
            if done.exit_status != 0:
                raise RuntimeError(
                    f"{name}: {command!r} exited {done.exit_status}: {done.stderr!s}"
                )


async def _rollout(fleet: Any, install: str, batches: list[int | str]) -> None:
    from tasks.patch.rollout import batch_sizes  # imports Prefect: not before the session

    names = sorted(fleet.hosts)
    start = 0
    for size in batch_sizes(batches, len(names)):
        await asyncio.gather(*(_host(fleet, n, install) for n in names[start : start + size]))
        start += size


def rollout(fleet: Any, install: str, batches: list[int | str]) -> None:
    """Scan, install (`install`: the apt-get command line Ansible runs too) and verify every
    lab host, batch after batch."""
    asyncio.run(_rollout(fleet, install, batches))
