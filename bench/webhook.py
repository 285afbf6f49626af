"""Incident webhooks (issue 6): POST → flow run *Running*, and acknowledgement under a burst.

1. **POST → Running.** `ktlo serve --port P --poll 1` serves a runbook triggered by generic
   alerts (`team: ops`) and runs the receiver. `KTLO_BENCH_WEBHOOK_ALERTS` (default 30)
   distinct alerts are sent one at a time, about 1 s apart; for each, the latency is the time
   its flow run entered *Running* (the first Running state in the run's state history) minus
   the time the POST was sent (same host clock). The baseline ktlo avoids: the receiver alone
   (`ktlo webhook`) creating the runs plus `ktlo serve --no-webhook --poll 10`, i.e. Prefect's
   default served-deployment polling. Each setup has its own `KTLO_HOME`, runbooks dir and
   runbook name (so neither picks up the other's runs), gets two untimed warm-up alerts (the
   first run starts the fork server) and is stopped before the next one starts. Target:
   p95 < 2 s.
2. **Acknowledgement under a burst.** `ktlo webhook` in a fresh `KTLO_HOME` receives 1,000
   generic alerts (10% repeats of earlier dedup_keys, some of them still in flight) from 16,
   then from 32 concurrent keep-alive connections; per-request latency (send → 202) p50 /
   p99 / max and throughput are printed. Target: p99 < 50 ms. The alerts match a runbook
   whose deployment exists but is not served, so the receiver's dispatcher really creates one
   flow run per new incident during the burst (they are deleted afterwards, never executed).
   After the outbox drains, the store (`KTLO_HOME/ktlo.db`, `ktlo_incident`) must hold exactly
   one incident per distinct key with the repeats counted, and Prefect one flow run per
   incident.

Every process started here runs in its own process group and is stopped at the end of its
setup, also on errors; the temp dirs are removed. Uses the session's local Prefect server.

    python -m bench.webhook
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import Result, child_env, ratio_line, session

ALERTS_ENV = "KTLO_BENCH_WEBHOOK_ALERTS"
BURST_ENV = "KTLO_BENCH_WEBHOOK_BURST"
FAST_RUNBOOK = "bench-incident"
POLL_RUNBOOK = "bench-incident-poll"
WARMUP = 2
SPACING_S = 1.0
TARGET_P95_S = 2.0
TARGET_ACK_P99_MS = 50.0
REPEAT_FRACTION = 0.10
CONCURRENCY = (16, 32)
READY_TIMEOUT_S = 180
RUNS_TIMEOUT_S = 180
DRAIN_TIMEOUT_S = 600
TOKEN = "bench-" + uuid.uuid4().hex
REPO = Path(__file__).resolve().parents[1]
KTLO = str(Path(sys.executable).with_name("ktlo"))


# -- processes ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM the process group, SIGKILL what is left; nothing of the group survives."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:  # e.g. the fork server
        time.sleep(0.2)
    if _group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass
class Setup:
    """One KTLO_HOME with its runbooks dir and the ktlo processes started for it."""

    name: str
    api: str
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ktlo-bench-wh-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.base / "runbooks").mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        return child_env(
            PREFECT_API_URL=self.api,
            PREFECT_HOME=str(self.base / "prefect-home"),
            KTLO_HOME=str(self.base),
            KTLO_RUNBOOKS=str(self.base / "runbooks"),
            KTLO_WEBHOOK_TOKEN=TOKEN,
            KTLO_DATABASE_URL=None,
            COLUMNS="200",
        )

    def write_runbook(self, name: str) -> None:
        doc = {
            "name": name,
            "description": "webhook benchmark: one log step per incident",
            "triggers": [{"source": "generic", "match": {"team": "ops"}}],
            "steps": [{"id": "note", "uses": "log", "with": {"message": "{{ incident.summary }}"}}],
        }
        (self.base / "runbooks" / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def start(self, label: str, *args: str) -> None:
        log = self.base / f"{label}.log"
        self.procs[label] = subprocess.Popen(
            [KTLO, *args],
            cwd=REPO,
            env=self.env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def check_alive(self) -> None:
        for label, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name}: `ktlo {label}` exited {proc.returncode}:\n"
                    f"{_tail(self.base / f'{label}.log')}"
                )

    def wait_healthy(self, port: int) -> float:
        started = time.perf_counter()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            time.sleep(0.25)
        raise RuntimeError(f"{self.name}: the receiver on port {port} never became healthy")

    def wait_deployed(self, runbook: str) -> None:
        from prefect.exceptions import ObjectNotFound

        from ktlo.orchestration.launch import deployment_name

        async def exists(client: Any) -> bool:
            try:
                await client.read_deployment_by_name(deployment_name(runbook))
            except ObjectNotFound:
                return False
            return True

        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            if _call(exists):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{self.name}: runbook {runbook} was never deployed")

    def stop(self) -> None:
        for proc in self.procs.values():
            _stop(proc)
        self.procs.clear()

    def store_rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.base / "ktlo.db", timeout=30)
        try:
            return list(conn.execute(sql, params).fetchall())
        finally:
            conn.close()


@contextlib.contextmanager
def setup(name: str, api: str) -> Iterator[Setup]:
    s = Setup(name, api)
    try:
        yield s
    finally:
        s.stop()
        import shutil

        shutil.rmtree(s.base, ignore_errors=True)


# -- Prefect -----------------------------------------------------------------------------------


def _call(fn: Any) -> Any:
    from prefect.client.orchestration import get_client

    async def go() -> Any:
        async with get_client() as client:
            return await fn(client)

    return asyncio.run(go())


async def _incident_runs(client: Any, runbook: str) -> list[Any]:
    """Every flow run of the runbook's deployment tagged `ktlo-incident`."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    runs: list[Any] = []
    while True:
        page = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[runbook])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["ktlo-incident"])),
            sort=FlowRunSort.ID_DESC,
            limit=200,
            offset=len(runs),
        )
        runs.extend(page)
        if len(page) < 200:
            return runs


def _runs_by_incident(runs: Sequence[Any]) -> dict[str, list[Any]]:
    by: dict[str, list[Any]] = {}
    for run in runs:
        incident = (run.parameters or {}).get("incident") or {}
        by.setdefault(str(incident.get("id")), []).append(run)
    return by


def _wait_runs_final(s: Setup, runbook: str, ids: Sequence[str]) -> dict[str, list[Any]]:
    deadline = time.monotonic() + RUNS_TIMEOUT_S
    while True:
        by = _call(lambda c: _incident_runs(c, runbook))
        by = _runs_by_incident(by)
        mine = [r for i in ids for r in by.get(i, [])]
        if all(i in by for i in ids) and all(
            r.state is not None and r.state.is_final() for r in mine
        ):
            return {i: by[i] for i in ids}
        if time.monotonic() > deadline:
            missing = sum(1 for i in ids if i not in by)
            states = Counter(r.state.name if r.state else "?" for r in mine)
            raise RuntimeError(
                f"{s.name}: after {RUNS_TIMEOUT_S} s, {missing} of {len(ids)} incidents have no "
                f"run; run states {dict(states)}"
            )
        s.check_alive()
        time.sleep(0.5)


@dataclass(frozen=True)
class RunTiming:
    post_to_created_s: float
    post_to_running_s: float
    running_states: int
    completed: bool


def _timings(posted: dict[str, datetime], runs: dict[str, list[Any]]) -> list[RunTiming]:
    from prefect.client.schemas.objects import StateType

    async def states(client: Any) -> dict[Any, list[Any]]:
        return {r.id: await client.read_flow_run_states(r.id) for rs in runs.values() for r in rs}

    history = _call(states)
    out = []
    for incident_id, at in posted.items():
        run = runs[incident_id][0]
        running = [st.timestamp for st in history[run.id] if st.type == StateType.RUNNING]
        if not running:
            raise RuntimeError(f"flow run {run.id} never entered Running ({run.state.name})")
        out.append(
            RunTiming(
                post_to_created_s=(run.created - at).total_seconds(),
                post_to_running_s=(min(running) - at).total_seconds(),
                running_states=len(running),
                completed=bool(run.state and run.state.is_completed()),
            )
        )
    return out


# -- statistics --------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs)"


# -- 1. POST → Running -------------------------------------------------------------------------


def _alert(key: str, summary: str) -> dict[str, Any]:
    return {"summary": summary, "dedup_key": key, "labels": {"team": "ops"}}


def _send_spaced(port: int, prefix: str, n: int, spacing_s: float) -> dict[str, datetime]:
    """POST n distinct alerts one at a time, `spacing_s` apart; incident id → when sent."""
    posted: dict[str, datetime] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as client:
        next_at = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += spacing_s
            key = f"{prefix}-{i}-{uuid.uuid4().hex[:8]}"
            sent = datetime.now(UTC)
            response = client.post("/hooks/generic", json=_alert(key, f"bench {prefix} {i}"))
            if response.status_code != 202:
                raise RuntimeError(f"POST {key}: {response.status_code} {response.text[:300]}")
            ack = response.json()["incidents"][0]
            if ack["outcome"] != "opened" or not ack["runbooks"]:
                raise RuntimeError(f"POST {key}: unexpected acknowledgement {ack}")
            posted[ack["id"]] = sent
    return posted


@dataclass(frozen=True)
class Latency:
    setup: str
    samples: list[RunTiming]
    warmup_s: list[float]
    runs_per_incident: Counter[int]

    @property
    def running(self) -> list[float]:
        return [t.post_to_running_s for t in self.samples]

    def line(self) -> str:
        r = self.running
        created = [t.post_to_created_s for t in self.samples]
        created_to_running = [t.post_to_running_s - t.post_to_created_s for t in self.samples]
        twice = sum(1 for t in self.samples if t.running_states > 1)
        done = sum(1 for t in self.samples if t.completed)
        return (
            f"  {self.setup}: POST → Running p50 {pct(r, 50):.2f} s, p95 {pct(r, 95):.2f} s, "
            f"max {max(r):.2f} s, min {min(r):.2f} s (n={len(r)}); "
            f"POST → run created p50 {pct(created, 50):.3f} s, "
            f"created → Running p50 {pct(created_to_running, 50):.2f} s; "
            f"warm-up {', '.join(f'{w:.2f}' for w in self.warmup_s)} s; "
            f"runs per incident {dict(self.runs_per_incident)}, completed {done}/{len(r)}, "
            f"entered Running twice {twice}"
        )


def _measure(s: Setup, port: int, runbook: str, n: int) -> Latency:
    warm = _send_spaced(port, f"{s.name}-warm", WARMUP, SPACING_S)
    warm_runs = _wait_runs_final(s, runbook, list(warm))
    warm_t = _timings(warm, warm_runs)
    posted = _send_spaced(port, s.name, n, SPACING_S)
    runs = _wait_runs_final(s, runbook, list(posted))
    timings = _timings(posted, runs)
    per_incident = Counter(len(rs) for rs in runs.values())
    latency = Latency(s.name, timings, [t.post_to_running_s for t in warm_t], per_incident)
    print(latency.line(), flush=True)
    return latency


def direct(api: str, n: int) -> Latency:
    with setup("serve", api) as s:
        s.write_runbook(FAST_RUNBOOK)
        port = _free_port()
        s.start("serve", "serve", "--port", str(port), "--poll", "1", "--grace", "5")
        ready = s.wait_healthy(port)
        print(
            f"  ktlo serve --port {port} --poll 1: receiver healthy after {ready:.1f} s; {_load()}",
            flush=True,
        )
        return _measure(s, port, FAST_RUNBOOK, n)


def polling(api: str, n: int) -> Latency:
    with setup("webhook+poll10", api) as s:
        s.write_runbook(POLL_RUNBOOK)
        port = _free_port()
        s.start("serve", "serve", "--no-webhook", "--poll", "10", "--grace", "5")
        s.start("webhook", "webhook", "--port", str(port))
        ready = s.wait_healthy(port)
        s.wait_deployed(POLL_RUNBOOK)
        print(
            f"  ktlo webhook --port {port} + ktlo serve --no-webhook --poll 10: receiver healthy "
            f"after {ready:.1f} s; {_load()}",
            flush=True,
        )
        return _measure(s, port, POLL_RUNBOOK, n)


# -- 2. acknowledgement under a burst ----------------------------------------------------------


def burst_keys(prefix: str, total: int, rng: random.Random) -> list[str]:
    """`total` dedup_keys, REPEAT_FRACTION of them repeats of a key that came earlier."""
    repeats = round(total * REPEAT_FRACTION)
    keys = [f"{prefix}-{i}" for i in range(total - repeats)]
    # Repeats go after the first 5% of the burst, each repeating a key sent before it.
    for _ in range(repeats):
        pos = rng.randint(max(1, total // 20), len(keys))
        keys.insert(pos, rng.choice(keys[:pos]))
    return keys


@dataclass(frozen=True)
class Burst:
    concurrency: int
    sent: int
    distinct: int
    latencies_ms: list[float]
    wall_s: float
    statuses: Counter[int]
    outcomes: Counter[str]
    stored: int
    stored_repeats: int
    drain_s: float
    runs_per_incident: Counter[int]

    @property
    def throughput(self) -> float:
        return self.sent / self.wall_s

    def line(self) -> str:
        lat = self.latencies_ms
        return (
            f"  {self.concurrency} connections: {self.sent} alerts in {self.wall_s:.2f} s "
            f"({self.throughput:.0f}/s); ack latency p50 {pct(lat, 50):.1f} ms, "
            f"p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms; statuses {dict(self.statuses)}, "
            f"outcomes {dict(self.outcomes)}\n"
            f"    store: {self.stored} incidents for {self.distinct} distinct keys sent "
            f"({'match' if self.stored == self.distinct else 'MISMATCH'}), repeats counted "
            f"{self.stored_repeats} of {self.sent - self.distinct} "
            f"({'match' if self.stored_repeats == self.sent - self.distinct else 'MISMATCH'}); "
            f"outbox drained {self.drain_s:.1f} s after the burst began; flow runs per "
            f"incident {dict(self.runs_per_incident)}"
        )


async def _fire(port: int, keys: Sequence[str], concurrency: int) -> tuple[list[Any], float]:
    """POST every key from `concurrency` keep-alive connections; (latency s, status, ack).

    The senders write pre-serialised HTTP/1.1 requests on raw asyncio streams. Real senders
    sit on other machines; here they share two cores with the receiver and the Prefect
    server, and an httpx client per connection spent as much CPU per alert as the receiver
    did (1.8 ms), so the load generator, not the receiver, set the latencies.
    """
    import json

    head = (
        f"POST /hooks/generic HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
    )
    requests = []
    for key in keys:
        body = json.dumps(_alert(key, f"burst alert {key}")).encode()
        requests.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(requests)):
        queue.put_nowait(i)
    results: list[Any] = [None] * len(requests)
    connected = asyncio.Barrier(concurrency + 1)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await connected.wait()
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.perf_counter()
                writer.write(requests[i])
                status, body = await _read_response(reader)
                elapsed = time.perf_counter() - started
                ack = json.loads(body)["incidents"][0] if status == 202 else None
                results[i] = (elapsed, status, ack)
        finally:
            writer.close()

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await connected.wait()
    started = time.perf_counter()
    await asyncio.gather(*workers)
    wall = time.perf_counter() - started
    return results, wall


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body (what the receiver sends)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    return status, await reader.readexactly(length)


def _wait_drained(s: Setup, port: int) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        s.check_alive()
        with contextlib.suppress(httpx.HTTPError, ValueError):
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
            if health.get("outbox_pending") == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the outbox did not drain in {DRAIN_TIMEOUT_S} s")


def _delete_scheduled(runbook: str) -> int:
    """Delete the burst's runs that nothing executes (bulk deletes of at most 50)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from ktlo.orchestration.launch import deployment_name

    async def go(client: Any) -> int:
        dep = await client.read_deployment_by_name(deployment_name(runbook))
        flt = FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[dep.id]),
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING])
            ),
        ).model_dump(mode="json", exclude_unset=True)
        deleted = 0
        while True:
            response = await client._client.post(
                "/flow_runs/bulk_delete", json={"flow_runs": flt, "limit": 50}
            )
            response.raise_for_status()
            ids = response.json().get("deleted", [])
            deleted += len(ids)
            if not ids:
                return deleted

    return int(_call(go))


def burst(api: str, total: int, seed: int = 6) -> list[Burst]:
    rng = random.Random(seed)
    out: list[Burst] = []
    # The deployment of FAST_RUNBOOK exists (part 1) and nothing serves it any more: the
    # receiver's dispatcher creates real flow runs, which stay Scheduled until deleted below.
    with setup("burst", api) as s:
        s.write_runbook(FAST_RUNBOOK)
        port = _free_port()
        s.start("webhook", "webhook", "--port", str(port))
        ready = s.wait_healthy(port)
        print(f"  ktlo webhook --port {port}: healthy after {ready:.1f} s", flush=True)
        try:
            # Warm-up (untimed): the first requests load runbooks and open connections.
            warm = burst_keys("warm", 40, rng)
            asyncio.run(_fire(port, warm, 4))
            _wait_drained(s, port)
            for concurrency in CONCURRENCY:
                prefix = f"b{concurrency}x{uuid.uuid4().hex[:6]}"
                keys = burst_keys(prefix, total, rng)
                print(f"  burst at {concurrency} connections; {_load()}", flush=True)
                began = time.perf_counter()
                results, wall = asyncio.run(_fire(port, keys, concurrency))
                _wait_drained(s, port)
                drain = time.perf_counter() - began
                stored, repeats = s.store_rows(
                    "SELECT count(*), coalesce(sum(repeats), 0) FROM ktlo_incident "
                    "WHERE key LIKE ?",
                    f"generic:{prefix}-%",
                )[0]
                ids = {r[2]["id"] for r in results if r[2] is not None}
                by = _runs_by_incident(_call(lambda c: _incident_runs(c, FAST_RUNBOOK)))
                per_incident = Counter(len(by.get(i, [])) for i in ids)
                b = Burst(
                    concurrency=concurrency,
                    sent=len(keys),
                    distinct=len(set(keys)),
                    latencies_ms=[r[0] * 1000 for r in results],
                    wall_s=wall,
                    statuses=Counter(r[1] for r in results),
                    outcomes=Counter(r[2]["outcome"] for r in results if r[2] is not None),
                    stored=int(stored),
                    stored_repeats=int(repeats),
                    drain_s=drain,
                    runs_per_incident=per_incident,
                )
                print(b.line(), flush=True)
                out.append(b)
        finally:
            s.stop()
            with contextlib.suppress(Exception):
                print(f"  deleted {_delete_scheduled(FAST_RUNBOOK)} never-executed burst runs")
    return out


# -- report ------------------------------------------------------------------------------------


def run() -> Result:
    n = max(1, int(os.environ.get(ALERTS_ENV, 30)))
    total = max(20, int(os.environ.get(BURST_ENV, 1000)))
    with session() as sess:
        print(f"{_load()} at start", flush=True)
        print(f"1. POST → flow run Running, {n} alerts about {SPACING_S:g} s apart per setup")
        fast = direct(sess.api_url, n)
        slow = polling(sess.api_url, n)
        p95, p50 = pct(fast.running, 95), pct(fast.running, 50)
        b95, b50 = pct(slow.running, 95), pct(slow.running, 50)
        print(
            f"POST → Running p95 {p95:.2f} s (target < {TARGET_P95_S:g} s: "
            f"{'met' if p95 < TARGET_P95_S else 'MISSED'})",
            flush=True,
        )
        ratio_line("POST → Running p50", "ktlo serve", p50, "receiver + 10 s poll", b50)
        ratio95 = ratio_line("POST → Running p95", "ktlo serve", p95, "receiver + 10 s poll", b95)
        print(f"\n2. acknowledgement under a burst of {total} alerts ({_load()})", flush=True)
        bursts = burst(sess.api_url, total)
        for b in bursts:
            p99 = pct(b.latencies_ms, 99)
            print(
                f"ack p99 at {b.concurrency} connections {p99:.1f} ms (target < "
                f"{TARGET_ACK_P99_MS:g} ms: {'met' if p99 < TARGET_ACK_P99_MS else 'MISSED'}), "
                f"{b.throughput:.0f} alerts/s",
                flush=True,
            )
        print(f"{_load()} at the end", flush=True)
    ok_counts = all(
        b.stored == b.distinct
        and b.stored_repeats == b.sent - b.distinct
        and set(b.runs_per_incident) == {1}
        for b in bursts
    )
    acks = ", ".join(
        f"p99 {pct(b.latencies_ms, 99):.0f} ms @{b.concurrency} ({b.throughput:.0f}/s)"
        for b in bursts
    )
    result = Result(
        "webhook",
        f"webhook: POST → Running p50 {p50:.2f} s / p95 {p95:.2f} s vs 10 s polling "
        f"{b50:.2f} / {b95:.2f} s (ratio {ratio95:.2f}); burst acks {acks}; store counts "
        f"{'match' if ok_counts else 'MISMATCH'}",
        {
            "alerts": n,
            "serve_p50_s": round(p50, 3),
            "serve_p95_s": round(p95, 3),
            "serve_max_s": round(max(fast.running), 3),
            "poll10_p50_s": round(b50, 3),
            "poll10_p95_s": round(b95, 3),
            "poll10_max_s": round(max(slow.running), 3),
            "ratio_p95": round(ratio95, 3),
            "bursts": [
                {
                    "concurrency": b.concurrency,
                    "sent": b.sent,
                    "distinct": b.distinct,
                    "stored": b.stored,
                    "stored_repeats": b.stored_repeats,
                    "ack_p50_ms": round(pct(b.latencies_ms, 50), 2),
                    "ack_p99_ms": round(pct(b.latencies_ms, 99), 2),
                    "ack_max_ms": round(max(b.latencies_ms), 2),
                    "throughput_per_s": round(b.throughput, 1),
                    "drain_s": round(b.drain_s, 2),
                    "runs_per_incident": {str(k): v for k, v in b.runs_per_incident.items()},
                }
                for b in bursts
            ],
            "counts_match": ok_counts,
        },
    )
    result.emit()
    return result


if __name__ == "__main__":
    run()
