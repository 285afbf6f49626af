"""Scratch targets for a drill, and cleaning them up with proof.

Each service gets a temporary directory, a free loopback port and, when its plan asks, a
scratch database on a PostgreSQL server. Every resource is journalled before it exists; the
recover runbook writes the pid of anything it starts as `*.pid` in the scratch directory.
Cleanup stops those processes, drops the database, removes the directory, then *checks*
each is gone: the proof is what the report shows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ktlo import secrets
from ktlo.errors import KtloError
from ktlo.owners import local_owner_alive, owner_id
from ktlo.processes import pid_alive
from ktlo.settings import get_settings
from ktlo.store import audit
from tasks.dr import store
from tasks.dr.plan import Service, slug

STOP_GRACE_S = 5.0


class Targets(BaseModel):
    """What a service's recover runbook and checks are pointed at (`scratch.*` in a plan)."""

    dir: str
    port: int
    database: str | None = None
    postgres_dsn: str | None = Field(default=None, description="the scratch server's DSN")
    database_dsn: str | None = Field(default=None, description="DSN of the scratch database")


class Proof(BaseModel):
    """What cleanup removed and checked to be gone."""

    databases_dropped: list[str] = Field(default_factory=list)
    processes_stopped: list[int] = Field(default_factory=list)
    directories_removed: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scratch_root() -> Path:
    return get_settings().home_dir / "dr-scratch"


def allocate(run_id: str, svc: Service) -> Targets:
    """Journal, then create, the service's scratch directory; name its scratch database."""
    owner = owner_id()
    folder = scratch_root() / run_id[:8] / svc.name
    store.journal(
        store.Scratch(
            run_id=run_id, service=svc.name, kind="directory", name=str(folder), owner=owner
        )
    )
    folder.mkdir(parents=True, exist_ok=True)
    targets = Targets(dir=str(folder), port=free_port())
    if svc.scratch.postgres:
        name = f"ktlo_dr_{run_id[:8]}_{slug(svc.name)}"
        store.journal(
            store.Scratch(
                run_id=run_id,
                service=svc.name,
                kind="database",
                name=name,
                server=svc.scratch.postgres,
                owner=owner,
            )
        )
        targets.database, targets.postgres_dsn = name, svc.scratch.postgres
        targets.database_dsn = _with_database(svc.scratch.postgres, name)
    return targets


def real_targets(svc: Service) -> Targets:
    """The service's real targets (`ktlo dr execute`): nothing is journalled or cleaned."""
    spec = svc.target
    if spec is None:
        raise KtloError(f"service '{svc.name}' has no target: (dr execute needs one)")
    targets = Targets(dir=spec.dir, port=spec.port, database=spec.database)
    if spec.postgres:
        targets.postgres_dsn = spec.postgres
        if spec.database:
            targets.database_dsn = _with_database(spec.postgres, spec.database)
    return targets


def _with_database(dsn: str, name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params["dbname"] = name
    return make_conninfo("", **params)


def cleanup(run_id: str, service: str | None = None) -> Proof:
    """Remove every journalled, not yet cleaned resource of a drill (or one of its services)."""
    proof = Proof()
    rows = [r for r in store.leftovers(run_id) if service is None or r.service == service]
    done: list[int] = []
    for row in rows:  # processes first: they hold the database and the directory
        if row.kind == "directory":
            proof.processes_stopped += _stop_processes(Path(row.name), proof)
    for row in rows:
        before = len(proof.errors)
        if row.kind == "database":
            _drop_database(row.server, row.name, proof)
        elif row.kind == "directory":
            _remove_directory(Path(row.name), proof)
        if len(proof.errors) == before and row.id is not None:
            done.append(row.id)
    store.mark_cleaned(done)
    if rows:
        audit.record("dr.cleanup", service or run_id, run_id=run_id, details=proof.model_dump())
    return proof


def _pids(folder: Path) -> list[int]:
    pids = []
    for file in folder.glob("**/*.pid") if folder.is_dir() else []:
        text = file.read_text(errors="replace").strip()
        if text.isdigit():
            pids.append(int(text))
    return pids


def _stop_processes(folder: Path, proof: Proof) -> list[int]:
    stopped = []
    for pid in _pids(folder):
        if not pid_alive(pid):
            stopped.append(pid)
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        if pid_alive(pid):
            proof.errors.append(f"process {pid} is still running")
        else:
            stopped.append(pid)
    return stopped


def _drop_database(server: str, name: str, proof: Proof) -> None:
    import psycopg

    try:
        with psycopg.connect(server, autocommit=True) as conn:
            quoted = '"' + name.replace('"', '""') + '"'
            conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
            left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    except psycopg.Error as exc:
        proof.errors.append(f"database {name}: {secrets.redact(str(exc).strip().splitlines()[0])}")
        return
    if left:
        proof.errors.append(f"database {name} still exists")
    else:
        proof.databases_dropped.append(name)


def _remove_directory(folder: Path, proof: Proof) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    if folder.exists():
        proof.errors.append(f"directory {folder} still exists")
        return
    proof.directories_removed.append(str(folder))
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # the drill's folder, once its last service is gone


def reap() -> dict[str, Any]:
    """Clean the scratch of drills whose process died (killed, crashed) without cleaning up."""
    dead = sorted({r.run_id for r in store.leftovers() if local_owner_alive(r.owner) is False})
    return {run_id: cleanup(run_id).model_dump() for run_id in dead}
