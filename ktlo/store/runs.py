"""Run and step-run records: what `ktlo history` and `ktlo list` read."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import Any

from sqlalchemy import Table, and_, insert
from sqlmodel import col, func, select

from ktlo import secrets
from ktlo.status import RunStatus
from ktlo.store import audit
from ktlo.store.db import engine, session
from ktlo.store.models import Run, StepRun, iso, utcnow

COALESCE_S = 0.05  # a step record is in the store at most this long after the step ends
FINAL_STATUSES = tuple(s for s in RunStatus if s.final)


def start_run(
    run_id: str,
    runbook: str,
    *,
    params: dict[str, Any],
    trigger: str,
    parent_run_id: str | None = None,
    url: str | None = None,
) -> Run:
    with session() as s:
        run = s.get(Run, run_id)
        if run is None:
            run = Run(id=run_id, runbook=runbook)
        run.status = RunStatus.RUNNING
        run.trigger = trigger
        run.parent_run_id = parent_run_id
        run.params = secrets.redact(params)
        run.started_at = utcnow()
        run.finished_at = None
        run.error = None
        run.url = url
        s.add(run)
        audit.record(
            "run.started",
            runbook,
            run_id=run_id,
            details={"trigger": trigger, "params": run.params, "parent_run_id": parent_run_id},
            s=s,
        )
        return run


def record_steps(steps: list[StepRun]) -> None:
    """Store finished steps and their audit events in one transaction (Core: a hot path).

    The steps are not changed (the engine hands them to a writer thread and reads them on).
    """
    table: Table = StepRun.__table__  # type: ignore[attr-defined]
    rows, entries = [], []
    for step in steps:
        values = {c.name: getattr(step, c.name) for c in table.columns if c.name != "id"}
        for name in ("summary", "error", "output"):
            values[name] = secrets.redact(values[name])
        rows.append(values)
        details = {
            "uses": step.uses,
            "attempts": step.attempts,
            "duration_ms": step.duration_ms,
            "continued": step.continued,
            "summary": values["summary"],
            "error": values["error"],
        }
        entries.append(audit.Entry(f"step.{step.status}", step.step_id, details, step.run_id))
    with engine().begin() as conn:
        conn.execute(insert(table), rows)
        audit.record_many(entries, conn)


class StepRecorder:
    """Writes a run's step records in order on a thread of its own.

    Waiting for each write in the flow's event loop cost a step as much as its Prefect task
    run; here the steps that finish within COALESCE_S of each other share a transaction
    (a transaction per step cost the flow's thread GIL time it needs for its task runs). `drain()` waits for every write and raises the first error, so a run never
    ends with its records missing.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[StepRun | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, step: StepRun) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="ktlo-steps", daemon=True)
            self._thread.start()
        self._queue.put(step)

    def _write(self) -> None:
        stopping = False
        while not stopping:
            batch: list[StepRun] = []
            item = self._queue.get()
            deadline = time.monotonic() + COALESCE_S
            while True:
                if item is None:
                    stopping = True
                    break
                batch.append(item)
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            if batch and self._error is None:
                try:
                    record_steps(batch)
                except BaseException as exc:
                    self._error = exc

    async def drain(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(thread.join)
        if self._error is not None:
            raise self._error


def finish_run(run_id: str, status: str, error: str | None = None) -> None:
    with session() as s:
        run = s.get(Run, run_id)
        if run is None:
            return
        run.status = status
        run.error = secrets.redact(error)
        run.finished_at = utcnow()
        s.add(run)
        audit.record(
            "run.finished",
            run.runbook,
            run_id=run_id,
            details={"status": status, "error": run.error},
            s=s,
        )


def get_run(run_id: str) -> Run | None:
    with session() as s:
        return s.get(Run, run_id)


def steps_of(run_id: str) -> list[StepRun]:
    with session() as s:
        return list(
            s.exec(
                select(StepRun)
                .where(StepRun.run_id == run_id)
                .order_by(col(StepRun.position), col(StepRun.id))
            ).all()
        )


def recent_runs(runbook: str | None = None, limit: int = 20) -> list[Run]:
    with session() as s:
        query = select(Run)
        if runbook:
            query = query.where(Run.runbook == runbook)
        return list(s.exec(query.order_by(col(Run.started_at).desc()).limit(limit)).all())


def last_runs() -> dict[str, Run]:
    """The most recent run of every runbook."""
    with session() as s:
        newest = (
            select(Run.runbook, func.max(Run.started_at).label("started"))
            .group_by(Run.runbook)
            .subquery()
        )
        query = select(Run).join(
            newest,
            and_(col(Run.runbook) == newest.c.runbook, col(Run.started_at) == newest.c.started),
        )
        return {run.runbook: run for run in s.exec(query).all()}


def step_json(step: StepRun) -> dict[str, Any]:
    """A step record as `ktlo run --json` and `ktlo history --json` print it (stable keys)."""
    return {
        "id": step.step_id,
        "uses": step.uses,
        "status": step.status,
        "continued": step.continued,
        "attempts": step.attempts,
        "started_at": iso(step.started_at),
        "finished_at": iso(step.finished_at),
        "duration_ms": step.duration_ms,
        "summary": step.summary,
        "error": step.error,
        "output": step.output,
    }
