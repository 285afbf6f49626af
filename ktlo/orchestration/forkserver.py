"""Start served flow runs by forking a warm process instead of spawning a cold interpreter.

Prefect's Runner runs each flow run of an in-memory flow with
`prefect.flow_engine.run_flow_in_subprocess`, which uses the `spawn` start method: a new
interpreter that imports Prefect and ktlo again (1.5-2 s here) before the run starts. In
`ktlo serve` we point that function at a `forkserver` context whose server process has
already imported Prefect, ktlo and every step type, so a run starts in tens of
milliseconds and still runs in its own process (a crashing run cannot take the server down).
Everything else (pickling the call, environment, control channel) stays Prefect's own.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
from types import ModuleType
from typing import Any

PRELOAD = [
    "prefect.flow_engine",
    "prefect.runner",
    "flows.runbook",
    "flows.catalog",
    "ktlo.steps.loaded",
]


class _WarmMultiprocessing:
    """Stands in for the `multiprocessing` module inside `prefect.flow_engine`."""

    def __init__(self, real: ModuleType, context: multiprocessing.context.BaseContext):
        self._real = real
        self._context = context

    def get_context(self, method: str | None = None) -> multiprocessing.context.BaseContext:
        return self._context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_installed = False


def install(preload: list[str] | None = None) -> None:
    """Make this process's Prefect start flow-run subprocesses from a warm fork server (started now)."""
    global _installed
    if _installed:
        return
    import multiprocessing.forkserver

    import prefect.flow_engine as flow_engine

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload or PRELOAD)
    flow_engine.multiprocessing = _WarmMultiprocessing(multiprocessing, context)  # type: ignore[assignment]
    # Start it now, not at the first run: its imports (2-4 s) overlap serve's own start-up.
    multiprocessing.forkserver.ensure_running()
    _installed = True
