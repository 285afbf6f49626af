"""HAProxy in front of a lab cluster: one TCP frontend, backend `pg`, an admin stats socket.

Each server is health-checked with `option httpchk GET /primary` on its own check port (the
lab's health endpoint, tests/labs/health.py, or Patroni's REST API), so only the writable
primary is UP. Timers are the ones measured in SPEC §13: `inter 500 fall 2 rise 1 fastinter
200` (a dead primary was DOWN 0.3-0.7 s after the kill), `retries 2`, `option redispatch 1`;
`on-marked-down shutdown-sessions` cuts clients still attached to a node that stops being
primary. `balance roundrobin` on purpose: if two nodes ever pass the check (split brain),
new connections reach both and a test can see it. HAProxy 2.6 has no `init-state`: every
server starts UP until its checks fail, so the lab waits for the replicas to be DOWN.

HAProxy runs in the foreground (`-db`) as a child of the lab; it is stopped by that pid.
Steps use the admin socket: `disable server pg/n1`, `set server pg/n1 state drain`, ...
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.labs.procs import free_port, listening, wait_gone, wait_until

HAPROXY = "/usr/sbin/haproxy"
BACKEND = "pg"


@dataclass
class Server:
    name: str
    port: int
    check_port: int


@dataclass
class HAProxy:
    """A running HAProxy; `port` is the frontend clients connect to."""

    config: Path
    socket: Path
    port: int
    servers: list[Server]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    backend: str = BACKEND
    pids: list[int] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            "global",
            "    maxconn 500",
            f"    stats socket {self.socket} mode 600 level admin",
            "    stats timeout 10s",
            "defaults",
            "    mode tcp",
            "    timeout connect 1s",
            "    timeout client 1h",
            "    timeout server 1h",
            "    timeout check 1s",
            "    retries 2",
            "    option redispatch 1",
            "frontend pg_front",
            f"    bind 127.0.0.1:{self.port}",
            f"    default_backend {self.backend}",
            f"backend {self.backend}",
            "    balance roundrobin",
            "    option httpchk GET /primary",
            "    http-check expect status 200",
            "    default-server inter 500 fall 2 rise 1 fastinter 200 downinter 500"
            " on-marked-down shutdown-sessions",
        ]
        lines += [
            f"    server {s.name} 127.0.0.1:{s.port} check port {s.check_port}"
            for s in self.servers
        ]
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10) -> None:
        self.config.write_text(self.render())
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pids.append(self.proc.pid)

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text()[-2000:]}")
            return self.socket.exists() and listening(self.port)

        wait_until(up, timeout, f"haproxy on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        wait_gone([self.proc.pid], 5)

    def admin(self, command: str, timeout: float = 2) -> str:
        """One command on the admin socket (e.g. `disable server pg/n1`); returns the reply."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Server name → HAProxy status (`UP`, `DOWN`, `MAINT`, `DRAIN`, `UP 1/2`, ...)."""
        rows = self.admin("show stat").splitlines()
        header = rows[0].lstrip("# ").split(",")
        px, sv, st = header.index("pxname"), header.index("svname"), header.index("status")
        out = {}
        for row in rows[1:]:
            cols = row.split(",")
            if len(cols) > st and cols[px] == self.backend and cols[sv] != "BACKEND":
                out[cols[sv]] = cols[st]
        return out

    def wait_state(self, server: str, status: str, timeout: float = 10) -> float:
        """Wait until `server` reports `status`; returns the monotonic time it was seen."""
        wait_until(
            lambda: self.states().get(server) == status,
            timeout,
            f"haproxy {self.backend}/{server} {status}",
            interval=0.01,
        )
        return time.monotonic()

    def up_servers(self) -> list[str]:
        return [name for name, status in self.states().items() if status.startswith("UP")]


def make(rundir: Path, confdir: Path, servers: list[Server]) -> HAProxy:
    """An HAProxy (not started) with its config in `confdir` and admin socket in `rundir`."""
    return HAProxy(
        config=confdir / "haproxy.cfg",
        socket=rundir / "haproxy.sock",
        port=free_port(),
        servers=servers,
        log=confdir / "haproxy.log",
    )
