"""Run commands on inventory hosts: over SSH (asyncssh) or, for `connection: local`, here.

One `HostRunner` per unit of work (a step, a CLI command): it keeps one SSH connection per
host and reuses it for every command on that host, caps how many handshakes run at once
(sshd's MaxStartups drops the rest), and never raises for a host that misbehaves — a
timeout, a refused connection or a wrong host key is a `CommandResult` with `error` set, so
one bad host never hides the others' results. With `keep_for_run=True` inside a run's step,
its connections outlive it for the run's next step (`ktlo.hosts.pool`).

The remote command line is built here and nowhere else: the host's `env` is exported inside
it (sshd accepts only LANG/LC_* from clients), every value shlex-quoted, the command wrapped
in `timeout` so it dies on the host when its time is up (not just the channel), and `run_as`
wraps it in `sudo -n` (never a password prompt). No PTY, stdin closed unless given.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import asyncssh

from ktlo import secrets
from ktlo.hosts import pool
from ktlo.hosts.inventory import Connection, Host
from ktlo.processes import child_options
from ktlo.steps.context import get_step_context

__all__ = ["CommandResult", "HostRunner", "command_line"]

TIMED_OUT = (124, 137)  # GNU timeout: the command got TERM (124) or, after -k, KILL (137)
KILL_AFTER_S = 2  # after TERM, `timeout -k` sends KILL this much later
GRACE_S = KILL_AFTER_S + 3  # the client waits this much longer than the remote timeout
# AES-GCM first: one AEAD call per packet in asyncssh, where chacha20-poly1305 (its default
# first choice) costs several; every OpenSSH server offers both.
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


@dataclass(frozen=True)
class CommandResult:
    """One command on one host. `error` is set when it did not run to an exit status in time."""

    host: str
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_code == 0

    def summary(self) -> str:
        """One line for logs and reports (secrets masked)."""
        if self.error:
            return secrets.redact(f"{self.host}: {self.error}")
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()
        last = f": {tail[-1][:200]}" if tail and not self.ok else ""
        return secrets.redact(f"{self.host}: exit {self.exit_code}{last}")

    def as_dict(self) -> dict[str, Any]:
        return dict(secrets.redact(asdict(self)))


def export_env(env: Mapping[str, str]) -> str:
    """`export A='x' B='y'; ` — empty when there is nothing to set."""
    if not env:
        return ""
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; "


def command_line(
    command: str,
    env: Mapping[str, str] | None = None,
    *,
    run_as: str | None = None,
    timeout_s: float | None = None,
    local: bool = False,
) -> str:
    """The shell line that runs `command` with `env`, as `run_as`, killed after `timeout_s`."""
    line = export_env(env or {}) + command
    if timeout_s is not None or run_as is not None:
        line = shlex.join(["/bin/sh", "-c", line])
    if timeout_s is not None:
        line = f"timeout -k {KILL_AFTER_S} {timeout_s:g} {line}"
    if run_as is not None:
        wrap = ["runuser", "-u", run_as, "--"] if local and os.geteuid() == 0 else None
        wrap = wrap or ["sudo", "-n", "-u", run_as, "--"]
        line = f"{shlex.join(wrap)} {line}"
    return line


class HostRunner:
    """An async context manager that runs commands on hosts and closes its connections."""

    def __init__(
        self,
        *,
        max_handshakes: int = 16,
        command_timeout_s: float = 60.0,
        connect_timeout_s: float | None = None,
        keep_for_run: bool = False,
    ) -> None:
        self.command_timeout_s = command_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._handshakes = asyncio.Semaphore(max_handshakes)
        self._conns: dict[str, asyncssh.SSHClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._keys: dict[str, tuple[object, ...]] = {}  # host -> its pool key, when kept
        self._pooled: set[str] = set()  # hosts whose connection came from an earlier step
        ctx = get_step_context() if keep_for_run else None
        self._run_id = ctx.run_id if ctx is not None else None

    async def __aenter__(self) -> HostRunner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        conns, self._conns = self._conns, {}
        if self._run_id is not None:  # left open for the run's next step
            for name, conn in list(conns.items()):
                if not conn.is_closed():
                    pool.park(self._keys[name], conns.pop(name))
        for conn in conns.values():
            conn.close()
        for conn in conns.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), 5)

    def forget(self, host: Host) -> None:
        """Drop the host's connection (it rebooted): the next command opens a new one."""
        conn = self._conns.pop(host.name, None)
        self._pooled.discard(host.name)
        if conn is not None:
            conn.abort()

    # -- SSH ------------------------------------------------------------------------------------
    async def connect(self, host: Host) -> asyncssh.SSHClientConnection:
        """The host's connection, opened on first use (raises what asyncssh raises)."""
        lock = self._locks.setdefault(host.name, asyncio.Lock())
        async with lock:
            conn = self._conns.get(host.name)
            if conn is not None and not conn.is_closed():
                return conn
            if self._run_id is not None:
                key = self._keys[host.name] = (self._run_id, *_identity(host))
                conn = pool.take(key)
                if conn is not None:
                    self._conns[host.name] = conn
                    self._pooled.add(host.name)
                    return conn
            async with self._handshakes:
                conn = await asyncio.wait_for(
                    asyncssh.connect(host.address, **_options(host)),
                    self.connect_timeout_s or host.connect_timeout_s,
                )
            self._conns[host.name] = conn
            return conn

    async def check(self, host: Host) -> str | None:
        """None when the host can be reached and its key verified, else why not."""
        if host.connection is Connection.LOCAL:
            return None
        try:
            await self.connect(host)
        except Exception as exc:  # every failure is reported, none raised
            return _connect_error(host, exc)
        return None

    async def run(
        self,
        host: Host,
        command: str,
        *,
        timeout_s: float | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        run_as: str | None = None,
    ) -> CommandResult:
        """Run one shell command on the host; never raises for the host's failures."""
        timeout = timeout_s if timeout_s is not None else self.command_timeout_s
        started = time.monotonic()
        if host.connection is Connection.LOCAL:
            return await self._run_local(host, command, timeout, stdin, env, run_as, started)
        line = command_line(command, {**host.env, **(env or {})}, run_as=run_as, timeout_s=timeout)
        try:
            conn = await self.connect(host)
        except Exception as exc:  # reported as the result, never raised
            return _failed(host, _connect_error(host, exc), started)
        feed: dict[str, Any] = (
            {"input": stdin} if stdin is not None else {"stdin": asyncssh.DEVNULL}
        )
        try:
            done = await asyncio.wait_for(self._exec(host, conn, line, feed), timeout + GRACE_S)
        except _Unreachable as exc:
            return _failed(host, _connect_error(host, exc.__cause__ or exc), started)
        except TimeoutError:
            self.forget(host)  # the channel may be stuck; the remote `timeout` kills the command
            return _failed(host, f"timed out after {timeout:g}s (no answer)", started)
        except (asyncssh.Error, OSError) as exc:
            self.forget(host)
            return _failed(host, f"connection lost: {_reason(exc)}", started)
        code = done.exit_status if done.exit_status is not None else None
        if code is None and done.exit_signal:
            code = 128 + _signal_number(done.exit_signal[0])
        elapsed = time.monotonic() - started
        error = None
        if code in TIMED_OUT and elapsed >= timeout * 0.98:
            error = f"timed out after {timeout:g}s (killed)"
        elif code is None:
            error = "the command ended without an exit status (connection lost?)"
        return CommandResult(
            host.name, code, str(done.stdout or ""), str(done.stderr or ""), elapsed, error
        )

    async def _exec(
        self, host: Host, conn: asyncssh.SSHClientConnection, line: str, feed: dict[str, Any]
    ) -> asyncssh.SSHCompletedProcess:
        """Start the command and wait for it. A connection kept from an earlier step that
        cannot even open a channel went stale in between: one new connection, once (the
        command never started, so it is not run twice)."""
        opts: dict[str, Any] = {"request_pty": False, "encoding": "utf-8", "errors": "replace"}
        try:
            proc = await conn.create_process(line, **opts, **feed)
        except (asyncssh.Error, OSError):
            if host.name not in self._pooled:
                raise
            self.forget(host)
            try:
                conn = await self.connect(host)
            except Exception as exc:
                raise _Unreachable from exc
            proc = await conn.create_process(line, **opts, **feed)
        self._pooled.discard(host.name)
        return await proc.wait()

    async def run_many(
        self, hosts: Sequence[Host], command: str, **kwargs: Any
    ) -> list[CommandResult]:
        """The same command on every host at once; results in the hosts' order."""
        return list(await asyncio.gather(*(self.run(h, command, **kwargs) for h in hosts)))

    # -- local ----------------------------------------------------------------------------------
    async def _run_local(
        self,
        host: Host,
        command: str,
        timeout: float,
        stdin: str | None,
        env: Mapping[str, str] | None,
        run_as: str | None,
        started: float,
    ) -> CommandResult:
        extra = {**host.env, **(env or {})}
        line = command_line(command, extra if run_as else None, run_as=run_as, local=True)
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            line,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**secrets.child_environment(), **extra},
            **child_options(),  # its own process group: a timeout kills all of it
        )
        data = stdin.encode() if stdin is not None else None
        try:
            out, err = await asyncio.wait_for(proc.communicate(data), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return _failed(host, f"timed out after {timeout:g}s (killed)", started)
        code = (
            proc.returncode
            if proc.returncode is None or proc.returncode >= 0
            else 128 - proc.returncode
        )
        return CommandResult(
            host.name,
            code,
            out.decode("utf-8", "replace"),
            err.decode("utf-8", "replace"),
            time.monotonic() - started,
        )


class _Unreachable(Exception):
    """A stale kept connection could not be replaced (the cause says why)."""


def _identity(host: Host) -> tuple[object, ...]:
    """What a connection to the host depends on: a kept one is reused only if all are equal."""
    return (
        host.name,
        host.address,
        host.port,
        host.user,
        host.known_hosts and (str(host.known_hosts), pool.file_version(str(host.known_hosts))),
        host.key_file and (str(host.key_file), pool.file_version(str(host.key_file))),
        host.password_secret,
        host.passphrase_secret,
        host.strict_host_keys,
    )


def _options(host: Host) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "port": host.port,
        "known_hosts": None,
        "agent_path": None,
        "config": [],
        "encryption_algs": list(CIPHERS),
    }
    if host.strict_host_keys and host.known_hosts is None:
        opts.pop("known_hosts")  # asyncssh's default: ~/.ssh/known_hosts, still strict
    elif host.strict_host_keys:
        opts["known_hosts"] = pool.known_hosts(str(host.known_hosts))
    if host.user:
        opts["username"] = host.user
    if host.key_file is not None:
        opts["client_keys"] = (
            [str(host.key_file)] if host.passphrase_secret else pool.client_keys(str(host.key_file))
        )
    if host.passphrase_secret:
        opts["passphrase"] = secrets.resolve(host.passphrase_secret)
    if host.password_secret:
        opts["password"] = secrets.resolve(host.password_secret)
    return opts


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return secrets.redact(text.splitlines()[0])


def _connect_error(host: Host, exc: BaseException) -> str:
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        where = host.known_hosts or "~/.ssh/known_hosts"
        return f"host key refused: {host.target}'s key is not the one in {where} ({_reason(exc)})"
    if isinstance(exc, TimeoutError):
        return f"unreachable: no SSH handshake with {host.target} in time"
    if isinstance(exc, asyncssh.PermissionDenied):
        return f"login refused on {host.target} ({_reason(exc)})"
    if isinstance(exc, secrets.SecretNotFound):
        return str(exc)
    return f"unreachable: {host.target}: {_reason(exc)}"


def _failed(host: Host, error: str, started: float) -> CommandResult:
    return CommandResult(host.name, None, "", "", time.monotonic() - started, error)


def _signal_number(name: str) -> int:
    try:
        return int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return 0
