"""Commands on a node's host (through ktlo.hosts): stop/fence, start, rewind, base backup,
and rewriting the node's own settings after either copied the source's configuration.

Every command runs as the node's `run_as` user. A host that cannot be reached is a result
with `error` set, never an exception: the caller decides (fence unconfirmed, rejoin failed).
"""

from __future__ import annotations

import shlex

from ktlo.hosts.inventory import Connection, Host, InventoryMissing, load_inventory
from ktlo.hosts.runner import CommandResult, HostRunner
from tasks.failover.model import FenceCommand, NodeConfig

# Alive = the pid in postmaster.pid is a live (not zombie) postgres process. A killed
# postmaster stays a zombie until reaped and pg_ctl would call it running (SPEC §13).
ALIVE_SH = """alive() {
  pid=$(head -n1 "$D/postmaster.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] || return 1
  st=$(sed -n 's/^State:[[:space:]]*\\(.\\).*/\\1/p' /proc/$pid/status 2>/dev/null)
  [ -n "$st" ] && [ "$st" != Z ] && grep -q postgres /proc/$pid/cmdline 2>/dev/null
}
"""
STALE_LOCKS_SH = """pid=$(head -n1 "$D/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then
  port=$(sed -n 4p "$D/postmaster.pid"); socks=$(sed -n 5p "$D/postmaster.pid" | tr ',' ' ')
  for d in $socks; do
    l="$d/.s.PGSQL.$port.lock"
    if [ "$(head -n1 "$l" 2>/dev/null)" = "$pid" ]; then rm -f "$l"; fi
  done
fi
rm -f "$D/postmaster.pid"
"""
# Settings a rewind or base backup copies from the source that must be the node's own.
OWN_KEYS = ("primary_conninfo", "primary_slot_name", "synchronous_standby_names")


def host_of(node: NodeConfig) -> Host:
    """The node's inventory host; `here` means this machine when no inventory declares it."""
    try:
        inventory = load_inventory()
    except InventoryMissing:
        inventory = None
    if inventory is not None and node.host in inventory.hosts:
        return inventory.hosts[node.host]
    if node.host == "here":
        return Host(name="here", connection=Connection.LOCAL)
    inventory_path = inventory.path if inventory is not None else "the inventory"
    raise LookupError(f"host '{node.host}' is not in {inventory_path}")


async def run(
    runner: HostRunner, node: NodeConfig, script: str, timeout_s: float, stdin: str | None = None
) -> CommandResult:
    try:
        host = host_of(node)
    except LookupError as exc:
        return CommandResult(node.host, None, "", "", 0.0, str(exc))
    env = f"D={shlex.quote(node.data_dir)}; B={shlex.quote(node.bin_dir)}; "
    return await runner.run(
        host, env + script, timeout_s=timeout_s, run_as=node.run_as, stdin=stdin
    )


async def stop(runner: HostRunner, node: NodeConfig, mode: str = "immediate") -> CommandResult:
    """Stop the node and prove it is gone: exit 0 and `stopped` only when no postmaster is left."""
    script = (
        ALIVE_SH
        + f'if alive; then "$B/pg_ctl" stop -D "$D" -m {shlex.quote(mode)} -w -t 20 >/dev/null 2>&1; fi\n'
        + "i=0; while alive && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n"
        + "if alive; then echo running; exit 1; fi\n"
        # A killed postmaster that nobody reaped stays a zombie, and postgres (or pg_rewind's
        # single-user recovery) would take its pid file and socket lock as a live server's:
        # both are stale (the socket lock only when it names that same dead pid).
        + STALE_LOCKS_SH
        + "echo stopped\n"
    )
    return await run(runner, node, script, timeout_s=40)


async def fence_command(
    runner: HostRunner, fence: FenceCommand, node_name: str, node: NodeConfig
) -> CommandResult:
    argv = [a.replace("{node}", node_name).replace("{host}", node.host) for a in fence.command]
    try:
        host = host_of(NodeConfig(dsn="", host=fence.host, data_dir="/"))
    except LookupError as exc:
        return CommandResult(fence.host, None, "", "", 0.0, str(exc))
    return await runner.run(host, shlex.join(argv), timeout_s=fence.timeout_s)


async def rewind(runner: HostRunner, node: NodeConfig, source_dsn: str) -> CommandResult:
    script = f'"$B/pg_rewind" -D "$D" --source-server={shlex.quote(source_dsn)} 2>&1'
    return await run(runner, node, script, timeout_s=300)


async def basebackup(runner: HostRunner, node: NodeConfig, source_dsn: str) -> CommandResult:
    """A fresh copy: the old data directory goes first (it could not be rewound)."""
    script = (
        'rm -rf "$D.ktlo-old" && if [ -d "$D" ]; then mv "$D" "$D.ktlo-old"; fi && '
        f'"$B/pg_basebackup" -D "$D" -X stream -c fast -d {shlex.quote(source_dsn)} 2>&1 && '
        'chmod 700 "$D" && rm -rf "$D.ktlo-old"'
    )
    return await run(runner, node, script, timeout_s=1800)


def own_auto_conf(copied: str, node: NodeConfig, settings: dict[str, str]) -> str:
    """postgresql.auto.conf with the source's copies of the node's own keys replaced."""
    keys = set(OWN_KEYS) | set(node.settings) | set(settings)
    kept = [line for line in copied.splitlines() if line.split("=", 1)[0].strip() not in keys]
    own = {**node.settings, **settings}
    kept += [f"{k} = '{v.replace(chr(39), chr(39) * 2)}'" for k, v in own.items()]
    return "\n".join(kept) + "\n"


async def make_replica(
    runner: HostRunner, node: NodeConfig, settings: dict[str, str]
) -> CommandResult:
    """Re-apply the node's own settings (plus `settings`) and mark it a standby."""
    read = await run(runner, node, 'cat "$D/postgresql.auto.conf" 2>/dev/null; true', 20)
    if not read.ok:
        return read
    body = own_auto_conf(read.stdout, node, settings)
    script = (
        'cat > "$D/postgresql.auto.conf.ktlo" && mv "$D/postgresql.auto.conf.ktlo"'
        ' "$D/postgresql.auto.conf" && touch "$D/standby.signal"'
    )
    return await run(runner, node, script, timeout_s=20, stdin=body)


async def start(runner: HostRunner, node: NodeConfig) -> CommandResult:
    script = '"$B/pg_ctl" start -D "$D" -l "$D/ktlo-start.log" -w -t 60 >/dev/null 2>&1 || { tail -n 20 "$D/ktlo-start.log"; exit 1; }'
    return await run(runner, node, script, timeout_s=90)
