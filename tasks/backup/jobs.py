"""Where backup code runs: a worker thread for a step (progress in the run's log), or the
CLI's own thread (progress on a bar); either way a cancelled job stops its tools."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ktlo.steps.context import get_step_context
from tasks.backup.model import human_bytes
from tasks.backup.stream import Job, Progress

T = TypeVar("T")
LOG_EVERY_S = 10.0


class LogProgress:
    """Progress for flow runs: one log line every LOG_EVERY_S seconds, not a bar."""

    def __init__(self, logger: Any, every_s: float = LOG_EVERY_S):
        self._logger = logger
        self._every = every_s
        self._label = ""
        self._total: int | None = None
        self._started = time.monotonic()
        self._last = self._started

    def start(self, description: str, total: int | None) -> None:
        self._label, self._total = description, total
        self._started = self._last = time.monotonic()

    def advance(self, done: int) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            return
        self._last = now
        rate = done / max(now - self._started, 1e-6)
        of = f" of {human_bytes(self._total)}" if self._total else ""
        self._logger.info(
            "%s: %s%s read (%s/s)", self._label, human_bytes(done), of, human_bytes(rate)
        )


def run_ids() -> tuple[str | None, str | None]:
    ctx = get_step_context()
    return (ctx.run_id, ctx.step_id) if ctx else (None, None)


def logger() -> Any:
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run (direct calls in tests)
        return logging.getLogger("ktlo.backup")


async def in_thread(work: Callable[[Job], T]) -> T:
    """Run `work` in a worker thread; on cancellation or timeout stop it and wait for it.

    The job carries the step's run and step ids and logs its warnings and progress to the
    run. Waiting matters: the thread marks its catalog entry failed and removes its partial
    object on the way out, and the step should not report back before that is done.
    """
    log = logger()
    run_id, step_id = run_ids()
    job = Job(progress=LogProgress(log), run_id=run_id, step_id=step_id, warn=log.warning)
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    future = loop.run_in_executor(None, ctx.run, work, job)
    # Once the step is cancelled nobody awaits it; its error ("cancelled") follows from the
    # cancellation and must not be logged with a stack as "never retrieved".
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    try:
        return await asyncio.shield(future)
    except BaseException:
        job.stop()
        await asyncio.wait([future], timeout=60)
        raise


def in_this_thread(work: Callable[[Job], T], progress: Progress) -> T:
    """Run `work` here (the CLI), reporting to `progress`; Ctrl-C stops the tools it started."""
    job = Job(progress=progress)
    try:
        return work(job)
    except BaseException:
        job.stop()
        raise
