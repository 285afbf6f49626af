"""SSH connections kept between the steps of one run, and the client's keys read once.

A run's steps each open a `HostRunner`; without this, a scan followed by a rollout pays every
host's handshake twice (on a busy machine 0.3-0.9 s per batch of hosts). A runner made with
`keep_for_run=True` leaves its open connections here when it closes, under the run's id and
the host's connection settings; the next runner of the same run (same event loop) takes them.
A connection nobody takes within `IDLE_S` is closed, and all are closed when the loop shuts
down (`asyncio.run` cancels the reaper, which then closes what is left).

Known-hosts files and client keys are parsed once per file version (inode, size, times), not
once per connection: 200 handshakes parsed them 200 times.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
import weakref
from collections.abc import Hashable
from typing import Any

import asyncssh

__all__ = ["IDLE_S", "client_keys", "file_version", "known_hosts", "park", "take"]

IDLE_S = 15.0


class _Pool:
    def __init__(self) -> None:
        self.idle: dict[Hashable, tuple[asyncssh.SSHClientConnection, float]] = {}
        self.reaper: asyncio.Task[None] | None = None

    async def reap(self) -> None:
        try:
            while self.idle:
                now = time.monotonic()
                for key, (conn, until) in list(self.idle.items()):
                    if until <= now or conn.is_closed():
                        del self.idle[key]
                        conn.close()
                if self.idle:
                    await asyncio.sleep(max(0.05, min(u for _, u in self.idle.values()) - now))
        finally:
            conns = [conn for conn, _ in self.idle.values()]
            self.idle.clear()
            self.reaper = None
            for conn in conns:
                conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in conns)), 2)


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()


def _pool() -> _Pool:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = _Pool()
    return pool


def park(key: Hashable, conn: asyncssh.SSHClientConnection) -> None:
    """Keep an open connection for the run's next step (closed after IDLE_S unused)."""
    pool = _pool()
    old = pool.idle.pop(key, None)
    if old is not None and old[0] is not conn:
        old[0].close()
    pool.idle[key] = (conn, time.monotonic() + IDLE_S)
    if pool.reaper is None:
        pool.reaper = asyncio.get_running_loop().create_task(pool.reap(), name="ktlo-ssh-idle")


def take(key: Hashable) -> asyncssh.SSHClientConnection | None:
    """The parked connection for this key, if it is still open."""
    found = _pool().idle.pop(key, None)
    if found is None or found[0].is_closed():
        return None
    return found[0]


def file_version(path: str) -> tuple[int, ...] | None:
    """Changes whenever the file does (replaced, rewritten, resized, touched)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@functools.lru_cache(maxsize=32)
def _read_known_hosts(path: str, version: tuple[int, ...]) -> asyncssh.SSHKnownHosts:
    return asyncssh.read_known_hosts(path)


@functools.lru_cache(maxsize=32)
def _load_keys(path: str, version: tuple[int, ...], cert: tuple[int, ...] | None) -> Any:
    return asyncssh.load_keypairs([path])


def known_hosts(path: str) -> Any:
    """The parsed file (or the path, for asyncssh to report why it cannot read it)."""
    version = file_version(path)
    if version is None:
        return path
    try:
        return _read_known_hosts(path, version)
    except (OSError, ValueError):
        return path


def client_keys(path: str) -> Any:
    """The key (and its `-cert.pub`, as asyncssh would load it), or the path on any trouble."""
    version = file_version(path)
    if version is None:
        return [path]
    try:
        return _load_keys(path, version, file_version(path + "-cert.pub"))
    except (OSError, ValueError, asyncssh.KeyImportError):
        return [path]  # e.g. encrypted: asyncssh loads it with the passphrase per connection
