"""Patroni beside the ktlo lab, for the failover benchmark only (no test depends on it).

Install (bench only; deliberately not in .ci/debian-packages.txt):

    apt-get install -y --no-install-recommends patroni etcd-server etcd-client

(Debian 12: Patroni 3.0.2, etcd 3.4.23; the packages' systemd units are not started here.)

`build(tmp)` starts a one-member etcd on loopback and a 3-node Patroni cluster with Patroni's
default timers (ttl 30, loop_wait 10, retry_timeout 10), as the postgres user, data in
/dev/shm like the ktlo lab (`pgcluster.data_home`), behind the same HAProxy front
(tests/labs/haproxy.py) whose checks hit Patroni's REST API `GET /primary` on each node.
Same PostgreSQL settings as the ktlo lab (COMMON), synchronous_mode as asked.

Two different kills, because Patroni reacts differently:
- `kill9(name)`: the postmaster only (as in the ktlo lab). Patroni on that node is alive,
  still holds the leader key, and restarts PostgreSQL there: no failover. Its `/primary`
  answers 200 from the leader key, so HAProxy never marks the node DOWN. Measured once:
  first acknowledged write 9.2 s after the kill, on the same node.
- `kill9_node(name)`: Patroni and the postmaster (the node died). HAProxy marks it DOWN in
  ~0.5 s (the REST API is gone); the leader key expires after ttl and a replica takes over:
  the failover the issue compares against. Measured once: first acknowledged write 28.0 s
  after the kill, no acknowledged write lost (synchronous_mode).
A build takes ~22-25 s (initdb, then replicas cloned on Patroni's 10 s loop).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from tests.labs import haproxy, procs
from tests.labs.pgcluster import new_data_root
from tests.labs.pgnode import COMMON, PG_BIN
from tests.labs.procs import as_postgres, wait_gone, wait_until
from tests.labs.writer import TABLE_SQL, Writer

PATRONI = "/usr/bin/patroni"
ETCD = "/usr/bin/etcd"
HBA = [
    "local all all trust",
    "local replication all trust",
    "host all all 127.0.0.1/32 trust",
    "host replication all 127.0.0.1/32 trust",
]


def unavailable() -> str | None:
    """Why Patroni cannot run here (and how to install it), or None."""
    for tool in (PATRONI, ETCD, str(PG_BIN / "postgres"), haproxy.HAPROXY):
        if not Path(tool).exists():
            return (
                f"{tool} missing: apt-get install -y --no-install-recommends patroni "
                "etcd-server etcd-client haproxy postgresql-15"
            )
    if os.geteuid() != 0:
        return "the Patroni lab needs root (it runs Patroni as the postgres user)"
    return None


@dataclass
class PatroniNode:
    name: str
    pg_port: int
    api_port: int
    dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.pg_port} user=postgres dbname=postgres"

    def api(self, path: str, timeout: float = 1) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of Patroni's REST API; (0, {}) when it does not answer."""
        url = f"http://127.0.0.1:{self.api_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")
        except (OSError, ValueError):
            return 0, {}


@dataclass
class PatroniLab:
    root: Path
    data_root: Path
    rundir: Path
    nodes: dict[str, PatroniNode]
    etcd_port: int
    synchronous: bool
    etcd: subprocess.Popen[bytes] | None = None
    router: haproxy.HAProxy | None = None
    writers: list[Writer] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)

    @property
    def router_dsn(self) -> str:
        assert self.router is not None
        return f"host=127.0.0.1 port={self.router.port} user=postgres dbname=postgres"

    def alive(self) -> bool:
        """True while every started Patroni runs; raises with its log tail when one died."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"patroni {node.name} exited: {node.log.read_text()[-1500:]}")
        return True

    def leader(self) -> str | None:
        """The node whose REST API answers 200 on /primary."""
        return next((n for n, node in self.nodes.items() if node.api("/primary")[0] == 200), None)

    def start(self, name: str) -> None:
        """Start the node's Patroni (it starts, bootstraps or clones PostgreSQL itself)."""
        node = self.nodes[name]
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen(
                [PATRONI, str(node.dir / "patroni.yml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                **as_postgres(),
            )
        self.started.add(node.proc.pid)

    def kill9(self, name: str) -> float:
        """SIGKILL the node's postmaster only; returns the monotonic time of the kill."""
        pid = procs.postmaster_pid(self.nodes[name].data)
        if pid is None:
            raise RuntimeError(f"{name}: PostgreSQL is not running")
        self.started.update([pid, *procs.children(pid)])
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        return t

    def kill9_node(self, name: str) -> float:
        """SIGKILL the node's Patroni, then its postmaster: the node is gone."""
        node = self.nodes[name]
        pid = procs.postmaster_pid(node.data)
        if pid is not None:
            self.started.update([pid, *procs.children(pid)])
        t = time.monotonic()
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        return t

    def wait_cluster(self, timeout: float = 120) -> str:
        """Wait for a leader with every other node streaming (and one sync standby in sync
        mode); returns the leader's name."""

        def ready() -> str | None:
            leader = self.leader() if self.alive() else None
            if leader is None:
                return None
            _, body = self.nodes[leader].api("/patroni")
            repl = body.get("replication", [])
            streaming = [r for r in repl if r.get("state") == "streaming"]
            if len(streaming) < len(self.nodes) - 1:
                return None
            if self.synchronous and not any(r.get("sync_state") == "sync" for r in repl):
                return None
            return leader

        name: str = wait_until(ready, timeout, "a Patroni leader with streaming replicas", 0.2)
        return name

    def writer(self, name: str = "w1", interval: float = 0.01) -> Writer:
        w = Writer(self.router_dsn, name, self.root / f"writer-{name}.log", interval).start()
        self.writers.append(w)
        self.started.update(w.pids)
        return w

    def pids(self) -> set[int]:
        for node in self.nodes.values():
            pid = procs.postmaster_pid(node.data)
            if pid is not None:
                self.started.update([pid, *procs.children(pid)])
        return set(self.started)

    def leftovers(self) -> list[int]:
        return procs.processes_under([self.root, self.data_root, self.rundir])

    def stop_all(self) -> None:
        """Stop writers and HAProxy, then every Patroni (which stops its PostgreSQL), then
        etcd; SIGKILL whatever of theirs is left; remove the data."""
        known = self.pids()
        for w in self.writers:
            w.stop()
        if self.router is not None:
            self.router.stop()
        running = [n.proc for n in self.nodes.values() if n.proc and n.proc.poll() is None]
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        procs.signal_pids([p for p in self.pids() if procs.alive(p)], signal.SIGKILL)
        if self.etcd is not None and self.etcd.poll() is None:
            self.etcd.terminate()
            self.etcd.wait(10)
        wait_gone(known, 10)
        shutil.rmtree(self.rundir, ignore_errors=True)
        shutil.rmtree(self.data_root, ignore_errors=True)


def _config(lab: PatroniLab, node: PatroniNode, scope: str) -> dict[str, Any]:
    same = {k: v for k, v in COMMON.items() if k != "listen_addresses"}
    return {
        "scope": scope,
        "namespace": "/ktlo-lab/",
        "name": node.name,
        "restapi": {
            "listen": f"127.0.0.1:{node.api_port}",
            "connect_address": f"127.0.0.1:{node.api_port}",
        },
        "etcd3": {"hosts": [f"127.0.0.1:{lab.etcd_port}"]},
        "bootstrap": {
            "dcs": {
                "ttl": 30,
                "loop_wait": 10,
                "retry_timeout": 10,
                "maximum_lag_on_failover": 1048576,
                "synchronous_mode": lab.synchronous,
                "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": same},
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, {"wal-segsize": "1"}],
        },
        "postgresql": {
            "listen": f"127.0.0.1:{node.pg_port}",
            "connect_address": f"127.0.0.1:{node.pg_port}",
            "data_dir": str(node.data),
            "bin_dir": str(PG_BIN),
            "pgpass": str(node.dir / "pgpass"),
            "authentication": {
                "superuser": {"username": "postgres"},
                "replication": {"username": "postgres"},
                "rewind": {"username": "postgres"},
            },
            "parameters": {"unix_socket_directories": str(lab.rundir)},
            "pg_hba": HBA,
        },
    }


def build(tmp: Path, nodes: int = 3, synchronous: bool = True) -> PatroniLab:
    """etcd, n1 (bootstraps), then the replicas (clone by pg_basebackup), then HAProxy."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    t0 = time.monotonic()
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="patroni-", dir=tmp))
    procs.make_traversable(root)
    data_root = new_data_root("patroni")
    rundir = Path(tempfile.mkdtemp(prefix="ktlo-patroni-run-"))
    ports = procs.free_ports(2 + 2 * nodes)
    lab = PatroniLab(root, data_root, rundir, {}, ports[0], synchronous)
    scope = f"lab{os.getpid()}{ports[0]}"
    for i in range(nodes):
        name = f"n{i + 1}"
        node = PatroniNode(
            name, ports[2 + 2 * i], ports[3 + 2 * i], data_root / name, root / f"{name}.log"
        )
        node.dir.mkdir()
        (node.dir / "patroni.yml").write_text(yaml.safe_dump(_config(lab, node, scope)))
        lab.nodes[name] = node
    for d in (root, data_root, rundir):
        procs.chown_tree(d)
    try:
        _start_etcd(lab, peer_port=ports[1])
        lab.timings["etcd_s"] = time.monotonic() - t0
        lab.start("n1")
        wait_until(
            lambda: lab.alive() and lab.nodes["n1"].api("/primary")[0] == 200, 120, "n1 leader", 0.2
        )
        for name in list(lab.nodes)[1:]:
            lab.start(name)
        leader = lab.wait_cluster()
        lab.timings["cluster_s"] = time.monotonic() - t0
        servers = [haproxy.Server(n.name, n.pg_port, n.api_port) for n in lab.nodes.values()]
        lab.router = haproxy.make(rundir, root, servers)
        lab.router.start()
        lab.started.update(lab.router.pids)
        for name in lab.nodes:
            lab.router.wait_state(name, "UP" if name == leader else "DOWN")
        with psycopg.connect(lab.router_dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(TABLE_SQL)
    except BaseException:
        lab.stop_all()
        raise
    lab.timings["total_s"] = time.monotonic() - t0
    return lab


def _start_etcd(lab: PatroniLab, peer_port: int) -> None:
    client = f"http://127.0.0.1:{lab.etcd_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    cmd = [
        ETCD, "--name", "lab", "--data-dir", str(lab.data_root / "etcd"),
        "--listen-client-urls", client, "--advertise-client-urls", client,
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
        "--initial-cluster", f"lab={peer}", "--initial-cluster-state", "new",
    ]  # fmt: skip
    with (lab.root / "etcd.log").open("ab") as log:
        lab.etcd = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **as_postgres())
    lab.started.add(lab.etcd.pid)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{client}/health", timeout=1) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    wait_until(healthy, 30, f"etcd on {client}", 0.1)
