"""Health sweep of 1,000 HTTP endpoints (SPEC §9): one `health.sweep` flow run vs a bare
asyncio + httpx sweep (target ≤ 1.5x) and vs one Prefect task per check (target ≥ 10x faster).

The endpoints are 1,000 routes (`/c/0` … `/c/999`, each answering `{"status": "UP"}`) of a
raw-asyncio HTTP/1.1 keep-alive server in a separate process, so the server is never the
bottleneck. All three sweeps probe the same URLs with the same limits (100 checks in flight,
10 pooled keep-alive connections to the host, the sweep's default: a pool of 100 makes
httpcore itself ~10x slower) and check the same two conditions (`status == 200`,
`body.status == "UP"`):

- bare: `asyncio.gather` of `httpx.AsyncClient.get` calls, conditions checked inline;
- ktlo: a runbook with one `health.sweep` step of 1,000 checks, run by `runbook_flow` — the
  whole flow run: loading and validating the runbook, the sweep, alert state of 1,000 checks
  in the store, the step record and audit row, the table artifact;
- task per check: a flow awaiting 1,000 Prefect tasks, each probing one URL (one round).

    python -m bench.health_sweep
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    Result,
    Timing,
    measure,
    measure_alternating,
    ratio_line,
    rounds,
    server_cpu_s,
    session,
    wait_idle,
)

CHECKS = int(os.environ.get("KTLO_BENCH_CHECKS", 1000))
CONCURRENCY = 100
PER_HOST = 10  # the sweep's default HTTP connections per origin; the baselines use the same
TARGET_BARE = 1.5
TARGET_TASKS = 10.0
BODY = b'{"status": "UP"}'


# --- the target server (runs in a child process: `python -m bench.health_sweep --serve`) ----


class _Http(asyncio.Protocol):
    """Minimal HTTP/1.1 keep-alive GET handler: /c/<n> for n < CHECKS → 200, else 404."""

    def connection_made(self, transport: Any) -> None:
        self.transport, self.buffer = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
            found = path.startswith(b"/c/") and path[3:].isdigit() and int(path[3:]) < CHECKS
            status = b"200 OK" if found else b"404 Not Found"
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
            )


def serve(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            _Http, "127.0.0.1", port, backlog=1024
        )
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.health_sweep", "--serve", str(port)], cwd=root
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the benchmark HTTP server did not start")


# --- the three sweeps -----------------------------------------------------------------------


def urls(base: str) -> list[str]:
    return [f"{base}/c/{i}" for i in range(CHECKS)]


def _limits() -> Any:
    import httpx

    return httpx.Limits(max_connections=PER_HOST, max_keepalive_connections=PER_HOST)


async def bare_sweep(targets: list[str]) -> int:
    """The baseline: what a hand-written asyncio + httpx sweep does. Returns the failures."""
    import json

    import httpx

    slots = asyncio.Semaphore(CONCURRENCY)

    async with httpx.AsyncClient(limits=_limits()) as client:

        async def one(url: str) -> bool:
            async with slots:
                try:
                    response = await client.get(url, timeout=10)
                    return (
                        response.status_code == 200
                        and json.loads(response.content)["status"] == "UP"
                    )
                except (httpx.HTTPError, ValueError, KeyError):
                    return False

        results = await asyncio.gather(*(one(u) for u in targets))
    return results.count(False)


def write_runbook(directory: Path, targets: list[str]) -> Path:
    doc = {
        "name": "bench-health",
        "steps": [
            {
                "id": "sweep",
                "uses": "health.sweep",
                "with": {
                    "concurrency": CONCURRENCY,
                    "checks": [
                        {
                            "name": f"c{i}",
                            "type": "http",
                            "url": url,
                            "conditions": ["status == 200", 'body.status == "UP"'],
                        }
                        for i, url in enumerate(targets)
                    ],
                },
            }
        ],
    }
    path = directory / "bench-health.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _calls(runbook: Path, targets: list[str]) -> tuple[dict[str, Callable[[], Any]], list[float]]:
    """The sweeps to time; Prefect is imported here, after the session set its API URL."""
    import httpx
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from flows.runbook import runbook_flow
    from ktlo.store.runs import steps_of

    in_task_ms: list[float] = []

    def bare() -> None:
        failures = asyncio.run(bare_sweep(targets))
        if failures:
            raise RuntimeError(f"bare sweep: {failures} checks failed")

    def ktlo() -> None:
        state = asyncio.run(runbook_flow(runbook=str(runbook), return_state=True))
        if not state.is_completed():
            raise RuntimeError(f"health sweep flow run ended {state.name}: {state.message}")
        (step,) = steps_of(str(state.state_details.flow_run_id))
        out = step.output or {}
        if out.get("ok") != CHECKS:
            raise RuntimeError(f"health sweep: only {out.get('ok')} of {CHECKS} checks OK")
        in_task_ms.append(float(out["duration_ms"]))

    @task(name="check", cache_policy=NO_CACHE, persist_result=False)
    async def check(client: httpx.AsyncClient, slots: asyncio.Semaphore, url: str) -> bool:
        import json

        async with slots:
            response = await client.get(url, timeout=10)
            return response.status_code == 200 and json.loads(response.content)["status"] == "UP"

    @flow(name="bench-task-per-check")
    async def per_task(targets: list[str]) -> int:
        slots = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(limits=_limits()) as client:
            results = await asyncio.gather(*(check(client, slots, u) for u in targets))
        return results.count(False)

    def tasks() -> None:
        state = asyncio.run(per_task(targets, return_state=True))
        if not state.is_completed():
            raise RuntimeError(f"task-per-check flow run ended {state.name}: {state.message}")

    return {"bare": bare, "ktlo": ktlo, "tasks": tasks}, in_task_ms


def run() -> Result:
    with session() as s:
        server, base = start_server()
        try:
            targets = urls(base)
            runbook = write_runbook(s.home / "runbooks", targets)
            calls, in_task_ms = _calls(runbook, targets)
            idle = functools.partial(wait_idle, s.server_pid)
            n = rounds(3)
            t = measure_alternating({"bare": calls["bare"], "ktlo": calls["ktlo"]}, n, before=idle)
            # 1,000 task runs are slow and leave the server busy recording them: one round, last.
            t["tasks"] = measure(calls["tasks"], 1, warmup=0, before=idle)
            cpu = {name: _server_cost(calls[name], s.server_pid) for name in ("ktlo", "tasks")}
        finally:
            server.kill()
            server.wait()
        return _report(n, t, in_task_ms[1 : n + 1], cpu)  # [0] is the warm-up


def _server_cost(call: Callable[[], Any], pid: int) -> float:
    """Prefect server CPU seconds one sweep costs, counted until the server is idle again."""
    wait_idle(pid)
    before = server_cpu_s(pid)
    call()
    wait_idle(pid)
    return server_cpu_s(pid) - before


def _report(n: int, t: dict[str, Timing], in_task_ms: list[float], cpu: dict[str, float]) -> Result:
    bare, cand, tasks = t["bare"], t["ktlo"], t["tasks"]
    print(
        f"samples (s): bare [{bare.text()}]; ktlo flow run [{cand.text()}]; "
        f"task per check [{tasks.text()}]; the sweep task itself (ms) "
        f"[{', '.join(f'{ms:.0f}' for ms in in_task_ms)}]"
    )
    vs_bare = ratio_line(
        f"health sweep of {CHECKS} endpoints",
        "one health.sweep flow run",
        cand.median,
        "bare asyncio+httpx",
        bare.median,
        target=TARGET_BARE,
    )
    speedup = tasks.median / cand.median
    print(
        f"health sweep of {CHECKS} endpoints: task per check {tasks.median:.2f} s vs one "
        f"health.sweep flow run {cand.median:.2f} s → {speedup:.1f}x faster "
        f"(target ≥ {TARGET_TASKS:g}x: {'met' if speedup >= TARGET_TASKS else 'MISSED'})",
        flush=True,
    )
    sweep_s = sorted(in_task_ms)[len(in_task_ms) // 2] / 1000 if in_task_ms else float("nan")
    print(
        f"inside the flow run, the sweep task took {sweep_s:.2f} s (median); the rest is the "
        f"flow run itself: validation, state of {CHECKS} checks, records, artifact"
    )
    print(
        f"Prefect server CPU per sweep (recording it, until idle): health.sweep flow run "
        f"{cpu['ktlo']:.2f} s, task per check {cpu['tasks']:.2f} s "
        f"({cpu['tasks'] / max(cpu['ktlo'], 1e-3):.0f}x)"
    )
    result = Result(
        "health_sweep",
        f"health sweep: {CHECKS} endpoints in {cand.median:.2f} s, {vs_bare:.2f}x bare "
        f"(target ≤ {TARGET_BARE:g}), {speedup:.1f}x faster than task per check "
        f"(target ≥ {TARGET_TASKS:g})",
        {
            "checks": CHECKS,
            "rounds": n,
            "bare_s": round(bare.median, 4),
            "ktlo_s": round(cand.median, 4),
            "ktlo_sweep_task_s": round(sweep_s, 4),
            "task_per_check_s": round(tasks.median, 4),
            "ratio_vs_bare": round(vs_bare, 4),
            "speedup_vs_tasks": round(speedup, 2),
            "server_cpu_s": {name: round(value, 3) for name, value in cpu.items()},
            "target_ratio_vs_bare": TARGET_BARE,
            "target_speedup_vs_tasks": TARGET_TASKS,
        },
    )
    result.emit()
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        run()
