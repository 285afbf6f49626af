"""Scale-out (issue 5): 20 runs across two workers vs one worker, on the production stack.

The stack runs on loopback, in throwaway PostgreSQL databases: a Prefect server on PostgreSQL
(`PREFECT_API_DATABASE_CONNECTION_URL`), the ktlo store on PostgreSQL (`KTLO_DATABASE_URL`),
the runbooks deployed from a generated `prefect.yaml` (`ktlo deployments --write`, then
`ktlo deploy`) to the `ktlo` process work pool, and `ktlo worker --limit 4` processes
(polling every second). The runbook has one step, `sleep 2` in a shell.

Each round creates 20 runs of that deployment with ONE worker running, then with TWO (rounds
alternate which goes first; `KTLO_BENCH_ROUNDS`, default 1), and measures the wall time from
creating the first run to the last one Completed (the server's `end_time`). With 4 run slots
per worker the ideal is 5 waves of runs vs 3, i.e. a 1.67x speed-up; every run is a new Python
process, so on a 2-core machine the CPU, not the slots, is the limit.

It then checks that no run executed twice (one `ktlo_run` row, one shell step and one
`run.started` audit event per flow run) and which worker ran each run. The databases are
dropped and every process started here is stopped at the end, also on errors. This benchmark
does not use the session's embedded server; it needs PostgreSQL on 127.0.0.1:5432 (user
postgres, trust auth).

    python -m bench.workers
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import Result, child_env, ratio_line, rounds
from ktlo.orchestration import local_server

PG = "postgres@127.0.0.1:5432"
RUNBOOK = "bench-workers"
RUNS = 20
LIMIT = 4
SLEEP_S = 2
RUN_TIMEOUT_S = 600
REPO = Path(__file__).resolve().parents[1]
KTLO = str(Path(sys.executable).with_name("ktlo"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the process group, SIGKILL it if it does not exit in time."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):  # stragglers left in the group
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass
class Stack:
    base: Path
    api: str
    store_url: str
    runbooks: Path
    home: Path
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return child_env(
            PREFECT_API_URL=self.api,
            PREFECT_HOME=str(self.base / "prefect"),
            KTLO_DATABASE_URL=self.store_url,
            KTLO_RUNBOOKS=str(self.runbooks),
            KTLO_HOME=str(self.home),
            COLUMNS="200",
        )

    def ktlo(self, *args: str, timeout: float = 300) -> None:
        proc = subprocess.run(
            [KTLO, *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"ktlo {' '.join(args)} exited {proc.returncode}: "
                f"{(proc.stdout + proc.stderr).strip()[-2000:]}"
            )

    def start_worker(self, name: str) -> None:
        env = {
            **self.env,
            "KTLO_WORKER": name,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        }
        log = self.base / f"{name}.log"
        self.workers[name] = subprocess.Popen(
            [KTLO, "worker", "--limit", str(LIMIT), "--name", name],
            cwd=REPO,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def set_workers(self, n: int) -> None:
        """Exactly workers w1..wn running, each polling the work pool."""
        wanted = [f"w{i}" for i in range(1, n + 1)]
        for name in list(self.workers):
            if name not in wanted:
                _stop(self.workers.pop(name))
        started_at = datetime.now(UTC)
        fresh = [name for name in wanted if name not in self.workers]
        for name in fresh:
            self.start_worker(name)
        if fresh:
            self._wait_polling(fresh, started_at)

    def _wait_polling(self, names: list[str], since: datetime, timeout: float = 120) -> None:
        async def seen(client: Any) -> set[str]:
            workers = await client.read_workers_for_work_pool("ktlo")
            return {
                w.name
                for w in workers
                if w.last_heartbeat_time is not None and w.last_heartbeat_time >= since
            }

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in names:
                if self.workers[name].poll() is not None:
                    raise RuntimeError(f"worker {name} exited:\n{_tail(self.base / f'{name}.log')}")
            if set(names) <= self.call(seen):
                time.sleep(1)  # its first poll of the work queue follows the heartbeat
                return
            time.sleep(0.5)
        raise RuntimeError(f"workers {names} never polled the work pool")

    def call(self, fn: Any) -> Any:
        from prefect.client.orchestration import PrefectClient

        async def go() -> Any:
            async with PrefectClient(api=self.api) as client:
                return await fn(client)

        return asyncio.run(go())

    def store(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.store_url.replace("postgresql://", "postgresql+psycopg://"))
        try:
            with engine.connect() as conn:
                return list(conn.execute(text(sql), params).all())
        finally:
            engine.dispose()


@contextlib.contextmanager
def pg_stack() -> Iterator[Stack]:
    """Throwaway databases, a PostgreSQL-backed Prefect server; all of it gone at the end."""
    from sqlalchemy import create_engine, text

    tag = uuid.uuid4().hex[:8]
    prefect_db, store_db = f"ktlo_bench_prefect_{tag}", f"ktlo_bench_store_{tag}"
    admin = create_engine(f"postgresql+psycopg://{PG}/postgres", isolation_level="AUTOCOMMIT")
    base = Path(tempfile.mkdtemp(prefix="ktlo-bench-workers-"))
    server: subprocess.Popen[bytes] | None = None
    stack: Stack | None = None
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{prefect_db}"'))
            conn.execute(text(f'CREATE DATABASE "{store_db}"'))
        port = _free_port()
        server_log = base / "server.log"
        server = subprocess.Popen(
            local_server.server_command(port),
            env=child_env(
                PREFECT_HOME=str(base / "prefect"),
                PREFECT_API_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://{PG}/{prefect_db}",
                PREFECT_SERVER_ANALYTICS_ENABLED="false",
                PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="1",
            ),
            stdout=server_log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        api = f"http://127.0.0.1:{port}/api"
        started = time.perf_counter()
        deadline = time.monotonic() + 240
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL-backed Prefect server did not start:\n{_tail(server_log)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.5)
        print(
            f"stack: Prefect server on PostgreSQL {api} (healthy after "
            f"{time.perf_counter() - started:.1f} s), ktlo store on PostgreSQL, base {base}",
            flush=True,
        )
        (base / "runbooks").mkdir()
        (base / "home").mkdir()
        stack = Stack(base, api, f"postgresql://{PG}/{store_db}", base / "runbooks", base / "home")
        yield stack
    finally:
        procs = [*(stack.workers.values() if stack else []), *([server] if server else [])]
        for proc in procs:
            _stop(proc)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{prefect_db}" WITH (FORCE)'))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{store_db}" WITH (FORCE)'))
        admin.dispose()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def write_runbook(stack: Stack) -> None:
    (stack.runbooks / f"{RUNBOOK}.yaml").write_text(
        textwrap.dedent(
            f"""
            name: {RUNBOOK}
            description: scale-out benchmark, one {SLEEP_S} s step
            steps:
              - id: work
                uses: shell
                with: {{shell: true, command: 'echo worker=$KTLO_WORKER; sleep {SLEEP_S}'}}
            """
        ).lstrip()
    )


@dataclass(frozen=True)
class Batch:
    workers: int
    wall_s: float
    ids: list[str]
    queue_s: list[float]  # created → Running, per run
    running_s: list[float]  # Running → Completed, per run
    startup_s: list[float]  # Pending → Running, per run (process start)
    per_worker: dict[str, int]


def run_batch(stack: Stack, workers: int, label: str = "") -> Batch:
    """Create 20 runs, wait until all are final; wall time to the last one Completed."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from ktlo.orchestration.launch import deployment_name

    stack.set_workers(workers)

    async def create(client: Any) -> list[str]:
        dep = await client.read_deployment_by_name(deployment_name(RUNBOOK))
        return [str((await client.create_flow_run_from_deployment(dep.id)).id) for _ in range(RUNS)]

    t0 = datetime.now(UTC)
    ids = stack.call(create)
    uuids = [uuid.UUID(i) for i in ids]

    async def read(client: Any) -> list[Any]:
        return list(
            await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=uuids)), limit=RUNS
            )
        )

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        runs = stack.call(read)
        if len(runs) == RUNS and all(r.state is not None and r.state.is_final() for r in runs):
            break
        for name, proc in stack.workers.items():
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited:\n{_tail(stack.base / f'{name}.log')}")
        if time.monotonic() > deadline:
            states = sorted(r.state.name if r.state else "?" for r in runs)
            raise RuntimeError(f"runs not finished after {RUN_TIMEOUT_S} s: {states}")
        time.sleep(0.5)
    bad = [r.state.name for r in runs if not r.state.is_completed()]
    if bad:
        raise RuntimeError(f"{len(bad)} of {RUNS} runs did not complete: {bad}")
    wall = (max(r.end_time for r in runs) - t0).total_seconds()
    queue = [(r.start_time - r.created).total_seconds() for r in runs]
    running = [(r.end_time - r.start_time).total_seconds() for r in runs]

    async def pending_at(client: Any) -> dict[uuid.UUID, datetime]:
        out = {}
        for run_id in uuids:
            states = await client.read_flow_run_states(run_id)
            out[run_id] = min(st.timestamp for st in states if st.type.value == "PENDING")
        return out

    # Pending → Running: the worker starting the run's Python process, until the flow begins.
    pending = stack.call(pending_at)
    startup = [(r.start_time - pending[r.id]).total_seconds() for r in runs]
    steps = stack.store(
        "SELECT output FROM ktlo_step_run WHERE step_id = 'work' AND run_id = ANY(:ids)", ids=ids
    )
    per_worker: dict[str, int] = {}
    for (output,) in steps:
        name = str((output or {}).get("stdout", "")).split("=", 1)[-1].strip() or "?"
        per_worker[name] = per_worker.get(name, 0) + 1
    batch = Batch(workers, wall, ids, queue, running, startup, dict(sorted(per_worker.items())))
    print(
        f"  {label}{workers} worker(s) x --limit {LIMIT}: {RUNS} runs in {wall:.2f} s; "
        f"created → Running median {statistics.median(queue):.2f} s, max {max(queue):.2f} s, "
        f"Pending → Running (process start) median {statistics.median(startup):.2f} s, "
        f"Running → Completed median {statistics.median(running):.2f} s; "
        f"runs per worker {batch.per_worker}",
        flush=True,
    )
    return batch


def check_once(stack: Stack, ids: list[str]) -> dict[str, int]:
    """Every flow run executed exactly once, as ktlo recorded it."""
    rows = stack.store(
        "SELECT id, status FROM ktlo_run WHERE runbook = :rb AND id = ANY(:ids)",
        rb=RUNBOOK,
        ids=ids,
    )
    steps = stack.store(
        "SELECT run_id, count(*) FROM ktlo_step_run WHERE step_id = 'work' AND run_id = ANY(:ids)"
        " GROUP BY run_id",
        ids=ids,
    )
    started = stack.store(
        "SELECT run_id, count(*) FROM ktlo_audit WHERE action = 'run.started'"
        " AND run_id = ANY(:ids) GROUP BY run_id",
        ids=ids,
    )
    step_n = {r[0]: r[1] for r in steps}
    started_n = {r[0]: r[1] for r in started}
    return {
        "flow_runs": len(ids),
        "ktlo_run_rows": len(rows),
        "succeeded": sum(1 for r in rows if r.status == "succeeded"),
        "executed_twice": sum(1 for i in ids if step_n.get(i, 0) > 1 or started_n.get(i, 0) > 1),
        "never_executed": sum(1 for i in ids if step_n.get(i, 0) == 0),
    }


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit here, so the stack's cleanup runs when the bench is stopped."""

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run() -> Result:
    n = rounds(1)
    with _sigterm_unwinds(), pg_stack() as stack:
        write_runbook(stack)
        prefect_yaml = stack.base / "prefect.yaml"
        stack.ktlo("deployments", "--write", "--file", str(prefect_yaml))
        started = time.perf_counter()
        stack.ktlo("deploy", "--file", str(prefect_yaml))
        print(f"deployed from {prefect_yaml.name} in {time.perf_counter() - started:.1f} s")
        # Warm-up (untimed): the first runs on a fresh stack pay one-off costs.
        warm = run_batch(stack, 1, "warm-up, untimed: ")
        one: list[Batch] = []
        two: list[Batch] = []
        for i in range(n):
            for workers in (1, 2) if i % 2 == 0 else (2, 1):
                (one if workers == 1 else two).append(run_batch(stack, workers))
        checks = check_once(stack, [r for b in [warm, *one, *two] for r in b.ids])
    return _report(n, one, two, checks)


def _report(n: int, one: list[Batch], two: list[Batch], checks: dict[str, int]) -> Result:
    one_s = statistics.median(b.wall_s for b in one)
    two_s = statistics.median(b.wall_s for b in two)
    ideal = -(-RUNS // LIMIT) / -(-RUNS // (2 * LIMIT))
    print(
        f"samples (s): one worker [{', '.join(f'{b.wall_s:.2f}' for b in one)}], "
        f"two workers [{', '.join(f'{b.wall_s:.2f}' for b in two)}] (after one untimed batch)"
    )
    ratio = ratio_line(
        f"scale-out, {RUNS} runs of a {SLEEP_S} s step",
        "two workers",
        two_s,
        "one worker",
        one_s,
    )
    print(
        f"speed-up two vs one worker: {one_s / two_s:.2f}x (ideal with {LIMIT} slots each: "
        f"{ideal:.2f}x; a lower bound for one worker is {-(-RUNS // LIMIT) * SLEEP_S} s of sleep)"
    )
    print(
        f"executed once: {checks['flow_runs']} flow runs, {checks['ktlo_run_rows']} ktlo_run "
        f"rows ({checks['succeeded']} succeeded), executed twice: {checks['executed_twice']}, "
        f"never executed: {checks['never_executed']}",
        flush=True,
    )
    two_spread = [b.per_worker for b in two]
    result = Result(
        "workers",
        f"workers: {RUNS} runs, one worker {one_s:.2f} s vs two workers {two_s:.2f} s → "
        f"{one_s / two_s:.2f}x speed-up (ideal {ideal:.2f}x); executed twice "
        f"{checks['executed_twice']}",
        {
            "rounds": n,
            "runs": RUNS,
            "limit_per_worker": LIMIT,
            "one_worker_s": round(one_s, 3),
            "two_workers_s": round(two_s, 3),
            "speedup": round(one_s / two_s, 3),
            "ratio_two_vs_one": round(ratio, 3),
            "ideal_speedup": round(ideal, 3),
            "two_workers_runs_per_worker": two_spread,
            **checks,
        },
    )
    result.emit()
    return result


if __name__ == "__main__":
    run()
