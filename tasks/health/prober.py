"""Probing: the shared resources of one sweep, and one check observed within its timeout.

Every probe runs on the sweep's event loop and is bounded by its check's `timeout_s`
(`asyncio.timeout`), so a hanging target costs at most its timeout. Blocking clients
(pymysql, `statvfs` on a dead NFS mount) run on the sweep's own thread pool, where a stuck
call can only waste a thread, never the loop. Facts gathered before a failure are kept
(`connected: true` and then a query that hangs), and errors are one clear line, never a
traceback, with credentials removed. The probes themselves are the check types'
(tasks.health.checks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tasks.health.facts import elapsed_ms
from tasks.health.http_lanes import HttpLanes
from tasks.health.probe_errors import describe_error

if TYPE_CHECKING:
    from tasks.health.checks import CheckBase

T = TypeVar("T")


@dataclass
class Observation:
    facts: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    duration_ms: float = 0.0


class Prober:
    """Shared resources of one sweep: HTTP clients, concurrency bounds, a thread pool.

    A check takes what it holds (an HTTP client of its origin, see `HttpLanes`) and then a
    slot *before* its timeout starts, so queueing behind a slow or hanging target is never
    mistaken for a timeout of its own.
    """

    def __init__(self, concurrency: int, per_origin: int = 10):
        self.concurrency = concurrency
        self.http = HttpLanes(max(1, min(per_origin, concurrency)))
        self._slots = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(
            max_workers=min(concurrency, 32), thread_name_prefix="ktlo-probe"
        )

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def aclose(self) -> None:
        await self.http.aclose()
        # Threads stuck in a hung call are abandoned, not waited for.
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Prober:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def observe(self, check: CheckBase) -> Observation:
        """Probe one check within its timeout (waiting for a free slot does not count)."""
        async with check.hold(self), self._slots:
            obs = Observation()
            facts: dict[str, Any] = {}
            started = time.perf_counter()
            try:
                async with asyncio.timeout(check.timeout_s):  # no extra Task, unlike wait_for
                    await check.probe(self, facts)
            except TimeoutError:
                obs.error = f"timed out after {check.timeout_s:g}s"
            except Exception as exc:
                obs.error = describe_error(exc)
            obs.duration_ms = elapsed_ms(started)
            obs.facts = dict(facts)  # an abandoned thread may still write to `facts`
            return obs
