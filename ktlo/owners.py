"""Who owns a piece of work: host|pid|process start ticks, so a later process can tell a dead
owner from a live one (the pid alone may have been reused). Used by the backup writer's reaper
and by DR's scratch journal."""

from __future__ import annotations

import os
import socket


def start_ticks(pid: int) -> str | None:
    """Process start time in clock ticks since boot (with the pid, it identifies a process)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    except OSError:
        return None
    if fields[0] in ("Z", "X"):  # a zombie has finished: it does nothing any more
        return None
    return fields[19]


def owner_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}|{pid}|{start_ticks(pid) or ''}"


def local_owner_alive(owner: str) -> bool | None:
    """True/False for an owner on this host; None when it is another host's (cannot tell)."""
    host, _, rest = owner.partition("|")
    pid_text, _, ticks = rest.partition("|")
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    return start_ticks(int(pid_text)) == ticks
