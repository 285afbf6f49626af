"""A real PostgreSQL 15 cluster for failover tests and benchmarks: a primary, streaming
replicas and HAProxy in front, as the `postgres` user, on free loopback ports.

    lab = build(tmp, nodes=3, synchronous=True)   # ~1.5-2.5 s; +1-3 s for the first one
    w = lab.writer("w1")                           # commits numbered rows through HAProxy
    t = lab.kill9("n1")                            # SIGKILL of the postmaster (pid file)
    lab.router.wait_state("n1", "DOWN")            # ~0.3-0.7 s after the kill
    lab.promote("n2")                              # pg_promote, reloading while it waits
    w.wait_ack_after(t, port=lab.nodes["n2"].port); w.lost_ids(lab.nodes["n2"].dsn)
    lab.write_clusters_yaml(path)                  # SPEC §10 clusters.yaml for ktlo
    lab.stop_all()                                 # kills exactly what the lab started

Layout (why): each node is `<data_root>/nX/` with `data/` and `node.conf`. The data
directory's `postgresql.conf` is the single line `include '../node.conf'`, identical on
every node, so `pg_ctl -D data start` picks the node's own port, socket dir, cluster_name
and sync settings, and `pg_rewind` (which copies the source's postgresql.conf) cannot give a
node another node's settings. `postgresql.auto.conf` stays inside the data dir, as on a real
server: it holds `primary_conninfo`/`primary_slot_name` written by `pg_basebackup -R -C -S
nX`, and pg_rewind does copy it (SPEC §13: re-apply the node's own settings after a rewind).

`synchronous`: True/"ANY" → `ANY 1 (others)`, "FIRST" → `FIRST 1 (others)`, False → async.
Each node lists the *other* nodes, so the setting holds whichever node is primary (it is
ignored on standbys); n1 gets it once its replicas stream. Unix sockets and the HAProxy
admin socket live in a short /tmp dir (socket paths are limited to 107 bytes). Nodes start
as children of this process (`postgres -D`, setuid in the child), so a kill is reaped at
once; a node the code under test starts itself (`pg_ctl`) is found by its pid file.

Speed: once per process, `template()` runs initdb (1 MB WAL segments: less to copy) and
`pg_basebackup -R -X stream -C -S nX` for each replica against a throwaway primary, then
stops it cleanly. A lab copies those data directories (`cp -a`, in parallel), points the
replicas' `primary_conninfo` at its own primary's port and starts them: the replicas stream
from the slots copied with the primary. Data directories live in /dev/shm when it has room
(see `data_home`); logs, configs and writer records stay under `tmp`.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests.labs import haproxy, procs
from tests.labs.pglab import PgLab
from tests.labs.pgnode import HBA, INCLUDE, PG_BIN, Role, sync_names
from tests.labs.procs import as_postgres
from tests.labs.writer import TABLE_SQL, Writer

__all__ = ["PG_BIN", "PgLab", "Role", "Writer", "build", "lab_unavailable", "template"]


def lab_unavailable() -> str | None:
    """Why this machine cannot run the lab, or None."""
    if not (PG_BIN / "postgres").exists():
        return f"PostgreSQL 15 binaries not found in {PG_BIN}"
    if not Path(haproxy.HAPROXY).exists():
        return f"{haproxy.HAPROXY} not installed (Debian package haproxy)"
    if os.geteuid() != 0:
        return "the PostgreSQL lab needs root (it runs the servers as the postgres user)"
    try:
        procs.pg_ids()
    except KeyError:
        return "no postgres OS user"
    return None


SHM = Path("/dev/shm")
PREFIX = "ktlo-pgdata-"


def data_home() -> Path:
    """Where data directories go: /dev/shm (tmpfs) when it has room, else the temp dir.

    Why RAM: on this shared machine, copying ~75 MB of data directories to ext4 took 1.4-7 s
    under other sessions' writeback, to tmpfs ~0.2 s. A kill -9 of a process loses nothing
    that fsync would have saved (the kernel keeps the page cache), so the failover facts the
    lab measures are the same; the lab does not simulate power loss.
    """
    try:
        stat = os.statvfs(SHM)
    except OSError:
        return Path(tempfile.gettempdir())
    if stat.f_bavail * stat.f_frsize > 2 * 2**30 and os.access(SHM, os.W_OK):
        return SHM
    return Path(tempfile.gettempdir())


def new_data_root(kind: str) -> Path:
    """A new data root named after this pid; roots of dead pids (crashed sessions) go."""
    home = data_home()
    for old in home.glob(f"{PREFIX}*"):
        pid = old.name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not procs.alive(int(pid)):
            # Servers of a killed session still run there (each in its own session).
            procs.signal_pids(procs.processes_under([old]), signal.SIGKILL)
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-{kind}-", dir=home))


_template_lock = threading.Lock()
_templates: dict[int, PgLab] = {}


def template(nodes: int = 3) -> PgLab:
    """A stopped cluster of `nodes` data dirs (initdb + pg_basebackup), made once per process."""
    with _template_lock:
        if nodes not in _templates:
            base = new_data_root("template")
            atexit.register(shutil.rmtree, base, True)
            tpl = PgLab.create(base / "logs", base, base / "run", nodes, synchronous=False)
            primary = tpl.nodes["n1"]
            subprocess.run(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(primary.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                    "--wal-segsize=1",
                ],
                check=True,
                capture_output=True,
                **as_postgres(),
            )
            (primary.data / "postgresql.conf").write_text(INCLUDE)
            (primary.data / "pg_hba.conf").write_text(HBA)
            try:
                tpl.start("n1")
                _basebackups(tpl, "n1", list(tpl.nodes)[1:])
            finally:
                tpl.stop_all(remove_data=False)
            _templates[nodes] = tpl
        return _templates[nodes]


def build(tmp: Path, nodes: int = 3, synchronous: bool | str = True, router: bool = True) -> PgLab:
    """Start a primary (n1), `nodes - 1` streaming replicas and (router=True) HAProxy in front.

    `lab.timings` has the seconds each phase took (template is ~0 after the first build).
    """
    reason = lab_unavailable()
    if reason:
        raise RuntimeError(reason)
    t0 = time.monotonic()
    tpl = template(nodes)
    timings = {"template_s": time.monotonic() - t0}
    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="pglab-", dir=tmp))
    procs.make_traversable(root)
    lab = PgLab.create(
        root, new_data_root("lab"), Path(tempfile.mkdtemp(prefix="ktlo-pgrun-")), nodes, synchronous
    )
    lab.timings = timings
    names = list(lab.nodes)
    t1 = time.monotonic()
    try:
        if router:
            lab.start_health()  # a Python process: let it start while the copies run
        copies = [
            subprocess.Popen(["cp", "-a", str(tpl.nodes[n].data), str(lab.nodes[n].data)])
            for n in names
        ]
        if any(c.wait() != 0 for c in copies):
            raise RuntimeError("copying the template cluster failed")
        for name in names[1:]:
            _repoint(lab, name, "n1")
        timings["copy_s"] = time.monotonic() - t1
        t2 = time.monotonic()
        lab.start("n1")  # first: a replica that finds no primary retries only after 5 s
        lab.start(*names[1:])
        lab.wait_streaming("n1", nodes - 1)
        # Only now: a synchronous primary without standbys would block every commit.
        lab.configure("n1", synchronous_standby_names=sync_names(synchronous, "n1", names))
        lab.sql("n1", TABLE_SQL)
        timings["start_s"] = time.monotonic() - t2
        if router:
            t3 = time.monotonic()
            lab.start_router()
            assert lab.router is not None
            for name in names:  # HAProxy starts with every server UP until checks say not
                lab.router.wait_state(name, "UP" if name == "n1" else "DOWN")
            timings["router_s"] = time.monotonic() - t3
    except BaseException:
        lab.stop_all()
        raise
    timings["total_s"] = time.monotonic() - t0
    return lab


def _repoint(lab: PgLab, name: str, primary: str) -> None:
    """Set the port in the `primary_conninfo` that pg_basebackup -R wrote (template's port)."""
    auto = lab.nodes[name].data / "postgresql.auto.conf"
    text = auto.read_text()
    new, count = re.subn(
        r"(primary_conninfo = '[^\n]*?\bport=)\d+", rf"\g<1>{lab.nodes[primary].port}", text
    )
    if count != 1:
        raise RuntimeError(f"{auto}: no primary_conninfo with a port to repoint")
    auto.write_text(new)


def _basebackups(lab: PgLab, source: str, names: list[str]) -> None:
    """`pg_basebackup -R -X stream -C -S <name>` for each replica, one after the other.

    Not in parallel: one backup's checkpoint can recycle a segment the other still needs
    before its slot (made with -C when its WAL stream starts) reserves it.
    """
    src = lab.nodes[source]
    for name in names:
        node = lab.nodes[name]
        cmd = [
            str(PG_BIN / "pg_basebackup"),
            "-D",
            str(node.data),
            "-h",
            "127.0.0.1",
            "-p",
            str(src.port),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-C",
            "-S",
            name,
            "-c",
            "fast",
            "--no-sync",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **as_postgres())
        if done.returncode != 0:
            raise RuntimeError(f"pg_basebackup of {name} failed: {done.stderr[-1500:]}")
