"""Which runs this machine is running, known without asking Prefect.

A run's process holds `KTLO_HOME/running/<run id>.lock` (an flock) while it runs; the
kernel releases it however the process dies (`kill -9`, OOM, a lost Prefect server), so a
free lock file means a dead run, at once and with no pid to be reused. The file stays
until Prefect has been told (`ktlo.orchestration.crashes.reconcile`): a run that died
while the server was down still gets its final state there once the server is back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from ktlo.processes import lock_is_free
from ktlo.settings import get_settings
from ktlo.status import RunStatus

DIED = "the process running it died"

here: set[str] = set()  # the runs this process is running


def _directory() -> Path:
    return get_settings().home_dir / "running"


def lock_path(run_id: str) -> Path:
    return _directory() / f"{run_id}.lock"


@contextlib.contextmanager
def alive(run_id: str) -> Iterator[None]:
    """Hold `run_id`'s lock file while this process runs it."""
    path = lock_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Locked before it is visible under its name: a reader never sees a live run's file free.
    staging = path.with_name(f".{run_id}.{os.getpid()}")
    fd = os.open(staging, os.O_CREAT | os.O_RDWR, 0o600)  # close-on-exec: children lack it
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.replace(staging, path)
    here.add(run_id)
    try:
        yield
    finally:
        here.discard(run_id)
        path.unlink(missing_ok=True)
        os.close(fd)


def died_here(run_id: str) -> bool:
    """The process that ran `run_id` on this machine is gone: its lock file is there and free."""
    return lock_is_free(lock_path(run_id))


def dead_runs() -> list[str]:
    """Runs started on this machine whose process died and that Prefect was not told about."""
    directory = _directory()
    if not directory.is_dir():
        return []
    return [p.stem for p in directory.glob("*.lock") if died_here(p.stem)]


def close_dead_runs() -> list[tuple[str, str]]:
    """Record the dead runs as crashed in ktlo's store (Prefect is told later, when reachable)."""
    from ktlo.store import runs

    changed: list[tuple[str, str]] = []
    for run_id in dead_runs():
        record = runs.get_run(run_id)
        if record is not None and record.status == RunStatus.RUNNING:
            runs.finish_run(run_id, RunStatus.CRASHED, error=DIED)
            changed.append((run_id, RunStatus.CRASHED))
    return changed


def forget(run_id: str) -> None:
    """Prefect knows how the run ended: nothing left to tell."""
    lock_path(run_id).unlink(missing_ok=True)
