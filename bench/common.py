"""Shared benchmark helpers: a dedicated Prefect server per session, timing and result lines.

A session runs in a temporary `KTLO_HOME` (or `KTLO_BENCH_HOME` if set) with its own local
Prefect server, started with `ktlo.orchestration.local_server.start` and stopped at the end unless
`KTLO_BENCH_KEEP_SERVER` is set. `PREFECT_API_URL` is set before anything imports Prefect,
which reads its settings once at import. Benchmarks print what they measure; they never assert
on timings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEEP_SERVER_ENV = "KTLO_BENCH_KEEP_SERVER"
HOME_ENV = "KTLO_BENCH_HOME"
ROUNDS_ENV = "KTLO_BENCH_ROUNDS"

# The environment as it was before the session changed it, for child processes.
_ORIGINAL_ENV = dict(os.environ)


@dataclass(frozen=True)
class Session:
    home: Path
    api_url: str
    server_pid: int
    server_start_s: float


_active: Session | None = None


def rounds(default: int = 5) -> int:
    """How many timed rounds a benchmark runs (`KTLO_BENCH_ROUNDS` overrides)."""
    return max(1, int(os.environ.get(ROUNDS_ENV, default)))


@contextlib.contextmanager
def session() -> Iterator[Session]:
    """Run the enclosed benchmarks against a dedicated local Prefect server (re-entrant)."""
    global _active
    if _active is not None:
        yield _active
        return
    if "prefect" in sys.modules:
        raise RuntimeError("prefect was imported before the benchmark session set PREFECT_API_URL")
    fixed = os.environ.get(HOME_ENV)
    home = Path(fixed).resolve() if fixed else Path(tempfile.mkdtemp(prefix="ktlo-bench-"))
    (home / "runbooks").mkdir(parents=True, exist_ok=True)
    os.environ.update(KTLO_HOME=str(home), KTLO_RUNBOOKS=str(home / "runbooks"))
    os.environ.pop("KTLO_DATABASE_URL", None)  # the embedded default: SQLite under KTLO_HOME
    os.environ.pop("PREFECT_API_URL", None)
    # Flow and task logs still go to the API; only their echo on the console is silenced.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

    from ktlo.orchestration import local_server
    from ktlo.settings import reload_settings
    from ktlo.store.db import reset_engines

    reload_settings()
    reset_engines()
    started = time.perf_counter()
    info = local_server.start(quiet=True)
    start_s = time.perf_counter() - started
    _reap(info.pid)
    os.environ["PREFECT_API_URL"] = info.api_url
    local_server.plain_http_tls(info.api_url)  # as the CLI's ensure_api does
    _active = Session(home=home, api_url=info.api_url, server_pid=info.pid, server_start_s=start_s)
    print(
        f"bench session: KTLO_HOME={home}, Prefect server {info.api_url} "
        f"(pid {info.pid}, healthy after {start_s:.1f} s)",
        flush=True,
    )
    try:
        yield _active
    finally:
        _active = None
        _drain_prefect()
        reset_engines()
        if os.environ.get(KEEP_SERVER_ENV):
            print(
                f"bench session: Prefect server left running (pid {info.pid}); reuse it with "
                f"{HOME_ENV}={home}, stop it with KTLO_HOME={home} ktlo server stop"
            )
        else:
            local_server.stop()
            if not fixed:
                shutil.rmtree(home, ignore_errors=True)


def _reap(pid: int) -> None:
    """Collect the server's exit status as soon as it exits.

    A server started by this process stays a zombie after it exits until it is waited for,
    and `local_server.stop()` would take the zombie for a live server.
    """

    def wait() -> None:
        with contextlib.suppress(ChildProcessError):  # started by another process: not ours
            os.waitpid(pid, 0)

    threading.Thread(target=wait, name="bench-server-reaper", daemon=True).start()


def _drain_prefect() -> None:
    """Send buffered logs and events before the server goes away (if Prefect was used)."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


def server_cpu_s(pid: int) -> float:
    """CPU seconds the server process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, window_s: float = 0.5, busy: float = 0.1, timeout_s: float = 60) -> float:
    """Wait until the server uses under `busy` of a CPU for a whole window; returns the wait.

    After a flow run the server still records its task runs from events for about a second;
    a run started meanwhile competes with that and measures the previous run's cost too.
    """
    started = time.perf_counter()
    before = server_cpu_s(pid)
    while time.perf_counter() - started < timeout_s:
        time.sleep(window_s)
        now = server_cpu_s(pid)
        if now - before < busy * window_s:
            break
        before = now
    return time.perf_counter() - started


def child_env(**changes: str | None) -> dict[str, str]:
    """The environment from before the session, with `changes` applied (None removes a key)."""
    env = {
        k: v for k, v in _ORIGINAL_ENV.items() if k not in ("PREFECT_API_URL", "KTLO_DATABASE_URL")
    }
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@dataclass(frozen=True)
class Timing:
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    def text(self) -> str:
        return ", ".join(f"{s:.2f}" for s in self.samples)


def measure_alternating(
    calls: Mapping[str, Callable[[], object]],
    n: int,
    warmup: int = 1,
    before: Callable[[], object] | None = None,
) -> dict[str, Timing]:
    """Run each call `warmup` times untimed, then `n` timed rounds, alternating the order.

    `before`, if given, runs untimed before every call (e.g. waiting for an idle server).
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for i in range(n):
        for name in order if i % 2 == 0 else reversed(order):
            if before is not None:
                before()
            started = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - started)
    return {name: Timing(tuple(values)) for name, values in samples.items()}


def measure(
    call: Callable[[], object], n: int, warmup: int = 1, before: Callable[[], object] | None = None
) -> Timing:
    """Run `call` `warmup` times untimed, then `n` times timed."""
    return measure_alternating({"call": call}, n, warmup, before)["call"]


def ratio_line(
    title: str,
    candidate: str,
    candidate_s: float,
    baseline: str,
    baseline_s: float,
    *,
    target: float | None = None,
) -> float:
    """Print `title: candidate X s vs baseline Y s → ratio R (target ≤ T)`; returns R."""
    ratio = candidate_s / baseline_s
    line = f"{title}: {candidate} {candidate_s:.2f} s vs {baseline} {baseline_s:.2f} s → ratio {ratio:.2f}"
    if target is not None:
        line += f" (target ≤ {target:g}: {'met' if ratio <= target else 'MISSED'})"
    elif ratio < 1:
        line += f" ({1 / ratio:.1f}x faster)"
    print(line, flush=True)
    return ratio


@dataclass
class Result:
    bench: str
    headline: str
    data: dict[str, Any] = field(default_factory=dict)

    def emit(self) -> None:
        print("BENCH_JSON " + json.dumps({"bench": self.bench, **self.data}), flush=True)
