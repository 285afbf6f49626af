"""The running lab cluster: its nodes (start, kill9, stop, settings), queries and teardown.

Built by tests/labs/pgcluster.py (see there for the layout and why settings live outside
the data directories).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml

from tests.labs import haproxy, health, procs
from tests.labs.pgnode import COMMON, PG_BIN, STATUS_SQL, Node, NodeStatus, Role, sync_names
from tests.labs.procs import as_postgres, wait_gone, wait_until
from tests.labs.writer import Writer


@dataclass
class PgLab:
    root: Path  # logs, configs, writer records
    data_root: Path  # nX/node.conf and nX/data
    rundir: Path  # unix sockets (short path)
    nodes: dict[str, Node]
    synchronous: bool | str
    router: haproxy.HAProxy | None = None
    health: subprocess.Popen[bytes] | None = None
    writers: list[Writer] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)  # every pid this lab started or signalled
    checks: list[int] = field(default_factory=list)  # health endpoint port per node

    @classmethod
    def create(
        cls, root: Path, data_root: Path, rundir: Path, nodes: int, synchronous: bool | str
    ) -> PgLab:
        """Directories and node.conf files for n1..nN (no data yet), owned by postgres."""
        for d in (root, data_root, rundir):
            d.mkdir(exist_ok=True)
            procs.chown_tree(d)
        names = [f"n{i}" for i in range(1, nodes + 1)]
        lab = cls(root, data_root, rundir, {}, synchronous)
        for name, port in zip(names, procs.free_ports(nodes), strict=True):
            settings = {
                **COMMON,
                "port": str(port),
                "cluster_name": name,
                "unix_socket_directories": str(rundir),
                "synchronous_standby_names": ""
                if name == "n1"
                else sync_names(synchronous, name, names),
            }
            node = Node(name, port, data_root / name, root / f"{name}.log", settings)
            node.dir.mkdir()
            procs.chown_tree(node.dir)
            node.write_conf()
            lab.nodes[name] = node
        return lab

    # -- nodes -----------------------------------------------------------------------------

    def postmaster_pid(self, name: str) -> int | None:
        """The node's running postmaster (from postmaster.pid, checked against /proc)."""
        return procs.postmaster_pid(self.nodes[name].data)

    def _spawn(self, name: str) -> None:
        node = self.nodes[name]
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen(
                [str(PG_BIN / "postgres"), "-D", str(node.data)],
                stdout=log,
                stderr=subprocess.STDOUT,
                **as_postgres(),
            )
        self.started.add(node.proc.pid)

    def _wait_ready(self, name: str, timeout: float) -> None:
        node = self.nodes[name]
        proc = node.proc
        assert proc is not None

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{name}: postgres exited {proc.returncode}: {node.log.read_text()[-1500:]}"
                )
            try:
                lines = (node.data / "postmaster.pid").read_text().splitlines()
            except OSError:
                return False
            return (
                len(lines) >= 8
                and lines[0] == str(proc.pid)
                and lines[7].strip() in ("ready", "standby")
            )

        wait_until(ready, timeout, f"{name} accepting connections")

    def start(self, *names: str, timeout: float = 90) -> float:
        """Start nodes (in parallel) and wait until they accept connections; seconds taken."""
        t0 = time.monotonic()
        todo = [n for n in names if self.postmaster_pid(n) is None]
        for name in todo:
            self._spawn(name)
        for name in todo:
            self._wait_ready(name, timeout)
        return time.monotonic() - t0

    def kill9(self, name: str) -> float:
        """SIGKILL the node's postmaster; returns the monotonic time just before the kill.

        Its children (backends, walsenders) are orphaned and exit by themselves once they
        notice; the lab remembers them so stop_all() can make sure.
        """
        pid = self.postmaster_pid(name)
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        self.started.update([pid, *procs.children(pid)])
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        node = self.nodes[name]
        if node.proc is not None and node.proc.pid == pid:
            node.proc.wait()
        return t

    def stop(self, name: str, mode: str = "fast", timeout: float = 90) -> None:
        """Stop a node like `pg_ctl stop -m fast|immediate|smart`, and wait until it is gone."""
        sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "smart": signal.SIGTERM}[mode]
        pid = self.postmaster_pid(name)
        if pid is None:
            return
        kids = procs.children(pid)
        self.started.update([pid, *kids])
        os.kill(pid, sig)
        node = self.nodes[name]
        if node.proc is not None and node.proc.pid == pid:
            node.proc.wait(timeout)
        left = wait_gone([pid, *kids], timeout)
        if left:
            raise TimeoutError(f"{name}: still running after {mode} stop: pids {left}")

    def configure(self, name: str, **settings: str) -> None:
        """Change the node's own settings (node.conf, outside the data dir) and reload it."""
        node = self.nodes[name]
        node.settings.update(settings)
        node.write_conf()
        pid = self.postmaster_pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def configure_sync(self, mode: bool | str) -> None:
        """Switch every node to ANY/FIRST/async (`synchronous_standby_names`), reloading."""
        self.synchronous = mode
        names = list(self.nodes)
        for name in names:
            self.configure(name, synchronous_standby_names=sync_names(mode, name, names))

    def promote(self, name: str, timeout: float = 90) -> float:
        """Promote a replica by hand (`pg_promote(false)`), reloading its configuration while
        it waits; returns the seconds until it left recovery.

        Why the reloads: right after the primary dies, the startup process can sit out
        `wal_retrieve_retry_interval` (5 s) before it sees the promote request; a SIGHUP
        while it waits ends that (SPEC §13; seen here too: 5.06 s without, with a reload
        only before the call).
        """
        t0 = time.monotonic()
        self.sql(name, "SELECT pg_promote(false)")
        pid = self.postmaster_pid(name)

        def promoted() -> bool:
            if self.sql(name, "SELECT pg_is_in_recovery()") == [(False,)]:
                return True
            if pid is not None:
                os.kill(pid, signal.SIGHUP)
            return False

        wait_until(promoted, timeout, f"{name} promoted", interval=0.05)
        return time.monotonic() - t0

    def follow(self, name: str, primary: str) -> None:
        """Point a replica at `primary` (conninfo + a slot there) and reload: no restart."""
        self.sql(
            primary,
            "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS"
            " (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
            (name, name),
        )
        conninfo = f"{self.nodes[primary].dsn} application_name={name}"
        self.sql(name, f"ALTER SYSTEM SET primary_conninfo = '{conninfo}'")
        self.sql(name, f"ALTER SYSTEM SET primary_slot_name = '{name}'")
        self.sql(name, "SELECT pg_reload_conf()")

    # -- queries ---------------------------------------------------------------------------

    def sql(self, name: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.nodes[name].dsn, autocommit=True, connect_timeout=3) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def status(self) -> dict[str, NodeStatus]:
        """Per node: role (pg_is_in_recovery), LSNs and timeline; DOWN when it does not answer."""
        out = {}
        for name in self.nodes:
            try:
                row = self.sql(name, STATUS_SQL)[0]
            except psycopg.Error as exc:
                out[name] = NodeStatus(name, Role.DOWN, error=str(exc).strip().splitlines()[0])
                continue
            in_recovery, current, received, replayed, tli = row
            role = Role.REPLICA if in_recovery else Role.PRIMARY
            out[name] = NodeStatus(name, role, replayed if in_recovery else current, received, tli)
        return out

    def primaries(self) -> list[str]:
        return [n for n, s in self.status().items() if s.role is Role.PRIMARY]

    def replication(self, name: str) -> list[dict[str, Any]]:
        """pg_stat_replication of `name`: application_name, state, sync_state, replay_lsn."""
        rows = self.sql(
            name,
            "SELECT application_name, state, sync_state, replay_lsn::text"
            " FROM pg_stat_replication ORDER BY application_name",
        )
        keys = ("application_name", "state", "sync_state", "replay_lsn")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def wait_streaming(self, primary: str, count: int, timeout: float = 90) -> None:
        wait_until(
            lambda: sum(r["state"] == "streaming" for r in self.replication(primary)) >= count,
            timeout,
            f"{count} replicas streaming from {primary}",
            0.05,
        )

    # -- router, writers, config -----------------------------------------------------------

    @property
    def router_dsn(self) -> str:
        assert self.router is not None, "lab built without a router"
        return f"host=127.0.0.1 port={self.router.port} user=postgres dbname=postgres"

    def start_health(self) -> None:
        """The /primary endpoints, one process for all nodes (tests/labs/health.py)."""
        dsns = [n.dsn for n in self.nodes.values()]
        self.health, self.checks = health.spawn(dsns, self.root / "health.log")
        self.started.add(self.health.pid)

    def start_router(self, timeout: float = 15) -> None:
        """HAProxy in front of the nodes, checking each node's /primary endpoint."""
        if self.health is None:
            self.start_health()
        assert self.health is not None
        health.wait_listening(self.health, self.checks, self.root / "health.log", timeout)
        servers = [
            haproxy.Server(n.name, n.port, p)
            for n, p in zip(self.nodes.values(), self.checks, strict=True)
        ]
        self.router = haproxy.make(self.rundir, self.root, servers)
        self.router.start(timeout)
        self.started.update(self.router.pids)

    def writer(self, name: str = "w1", interval: float = 0.01) -> Writer:
        """A writer process committing numbered rows through HAProxy (stopped by stop_all)."""
        w = Writer(self.router_dsn, name, self.root / f"writer-{name}.log", interval).start()
        self.writers.append(w)
        self.started.update(w.pids)
        return w

    def cluster_config(self, name: str = "lab", max_lag_bytes: int = 16 * 2**20) -> dict[str, Any]:
        """This lab in the SPEC §10 clusters.yaml shape."""
        node = {"host": "here", "bin_dir": str(PG_BIN), "run_as": "postgres"}
        nodes = {
            n.name: {"dsn": n.dsn, **node, "data_dir": str(n.data)} for n in self.nodes.values()
        }
        cluster: dict[str, Any] = {"kind": "postgres", "synchronous": bool(self.synchronous)}
        cluster.update(max_lag_bytes=max_lag_bytes, nodes=nodes)
        if self.router is not None:
            router = {"kind": "haproxy", "socket": str(self.router.socket)}
            cluster["router"] = {**router, "backend": self.router.backend}
        return {"clusters": {name: cluster}}

    def write_clusters_yaml(self, path: Path, name: str = "lab", **kw: Any) -> Path:
        path.write_text(yaml.safe_dump(self.cluster_config(name, **kw), sort_keys=False))
        return path

    # -- teardown --------------------------------------------------------------------------

    def pids(self) -> set[int]:
        """Every pid the lab started, signalled or found under its nodes (for leak checks)."""
        for name in self.nodes:
            pid = self.postmaster_pid(name)
            if pid is not None:
                self.started.update([pid, *procs.children(pid)])
        return set(self.started)

    def leftovers(self) -> list[int]:
        """Live processes whose cwd or command line is inside the lab's directories."""
        return procs.processes_under(
            [self.root.resolve(), self.data_root.resolve(), self.rundir.resolve()]
        )

    def stop_all(self, remove_data: bool = True) -> None:
        """Stop writers, HAProxy, health endpoints and every node; kill what remains of them;
        remove the data directories (unless `remove_data=False`) and the socket directory."""
        known = self.pids()
        for w in self.writers:
            w.stop()
        if self.router is not None:
            self.router.stop()
        if self.health is not None and self.health.poll() is None:
            self.health.terminate()
            self.health.wait(5)
        for name in self.nodes:
            try:
                self.stop(name, "fast", timeout=15)
            except (TimeoutError, subprocess.TimeoutExpired):
                self.stop(name, "immediate", timeout=10)
        procs.signal_pids([p for p in known if procs.alive(p)], signal.SIGKILL)
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.wait(5)
        wait_gone(known, 10)
        shutil.rmtree(self.rundir, ignore_errors=True)
        if remove_data:
            shutil.rmtree(self.data_root, ignore_errors=True)
