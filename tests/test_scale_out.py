"""Production shape on loopback: a PostgreSQL-backed Prefect server, the ktlo store on
PostgreSQL, deployments from prefect.yaml on a process work pool, and two workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from ktlo.orchestration import local_server
from tests.conftest import require_service
from tests.helpers import KTLO, REPO, cli

PG = "postgres@127.0.0.1:5432"
pytestmark = pytest.mark.timeout(900)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    api: str
    store_url: str
    runbooks: Path
    home: Path
    workers: dict[str, subprocess.Popen[bytes]]

    @property
    def env(self) -> dict[str, str]:
        return {
            "PREFECT_API_URL": self.api,
            "KTLO_DATABASE_URL": self.store_url,
            "KTLO_RUNBOOKS": str(self.runbooks),
            "KTLO_HOME": str(self.home),
        }

    def start_worker(self, name: str, log: Path) -> None:
        env = {
            **os.environ,
            **self.env,
            "KTLO_WORKER": name,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "1",
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        }
        self.workers[name] = subprocess.Popen(
            [KTLO, "worker", "--limit", "2", "--name", name],
            cwd=REPO,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_service("PostgreSQL", 5432)
    tag = uuid.uuid4().hex[:8]
    prefect_db, store_db = f"ktlo_prefect_{tag}", f"ktlo_store_{tag}"
    admin = create_engine(f"postgresql+psycopg://{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{prefect_db}"'))
        conn.execute(text(f'CREATE DATABASE "{store_db}"'))
    base = tmp_path_factory.mktemp("scale")
    port = _free_port()
    server_env = {
        **os.environ,
        "PREFECT_HOME": str(base / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{PG}/{prefect_db}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    }
    server_env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen(
        local_server.server_command(port),
        env=server_env,
        stdout=(base / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail(
            "PostgreSQL-backed Prefect server did not start:\n"
            + (base / "server.log").read_text()[-3000:]
        )
    runbooks = base / "runbooks"
    runbooks.mkdir()
    (base / "home").mkdir()
    s = Stack(api, f"postgresql://{PG}/{store_db}", runbooks, base / "home", {})
    try:
        yield s
    finally:
        for proc in [*s.workers.values(), server]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*s.workers.values(), server]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{prefect_db}" WITH (FORCE)'))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{store_db}" WITH (FORCE)'))
        admin.dispose()


def _write(stack: Stack, name: str, body: str) -> None:
    (stack.runbooks / f"{name}.yaml").write_text(textwrap.dedent(body).lstrip())


def _client_call(stack: Stack, fn: Any) -> Any:
    from prefect.client.orchestration import PrefectClient

    async def go() -> Any:
        async with PrefectClient(api=stack.api) as client:
            return await fn(client)

    return asyncio.run(go())


def _start_runs(stack: Stack, name: str, params: list[dict[str, Any]]) -> list[str]:
    async def create(client: Any) -> list[str]:
        dep = await client.read_deployment_by_name(f"runbook/{name}")
        return [
            str((await client.create_flow_run_from_deployment(dep.id, parameters=p)).id)
            for p in params
        ]

    return _client_call(stack, create)


def _states(stack: Stack, ids: list[str]) -> dict[str, Any]:
    async def read(client: Any) -> dict[str, Any]:
        return {i: (await client.read_flow_run(uuid.UUID(i))).state for i in ids}

    return _client_call(stack, read)


def _wait_final(stack: Stack, ids: list[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = _states(stack, ids)
        if all(s is not None and s.is_final() for s in states.values()):
            return states
        time.sleep(1)
    raise AssertionError(
        f"runs not finished: {[s.name for s in _states(stack, ids).values() if s]}"
    )


def _store(stack: Stack, sql: str) -> list[Any]:
    url = stack.store_url.replace("postgresql://", "postgresql+psycopg://")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def test_two_workers_share_twenty_runs_and_concurrency_holds(stack: Stack, tmp_path: Path) -> None:
    ledger = tmp_path / "exclusive.log"
    _write(
        stack,
        "scale",
        """
        name: scale
        parameters:
          i: {type: integer, description: which run}
        steps:
          - id: work
            uses: shell
            with: {command: [sh, -c, "echo worker=$KTLO_WORKER run={{ params.i }}; sleep 1"]}
        """,
    )
    _write(
        stack,
        "exclusive",
        f"""
        name: exclusive
        concurrency: 1
        steps:
          - id: critical
            uses: shell
            with: {{shell: true, command: 'echo "start $(date +%s.%N)" >> {ledger}; sleep 2; echo "end $(date +%s.%N)" >> {ledger}'}}
        """,
    )
    prefect_yaml = tmp_path / "prefect.yaml"
    wrote = cli("deployments", "--write", "--file", str(prefect_yaml), env=stack.env)
    assert wrote.returncode == 0, wrote.stdout + wrote.stderr
    refused = cli("deploy", "--file", str(prefect_yaml), env={**stack.env, "PREFECT_API_URL": ""})
    assert refused.returncode == 1
    assert "PREFECT_API_URL is not set" in refused.stderr
    deployed = cli("deploy", "--file", str(prefect_yaml), env=stack.env, timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    for name in ("w1", "w2"):
        stack.start_worker(name, tmp_path / f"{name}.log")

    ids = _start_runs(stack, "scale", [{"i": i} for i in range(20)])
    exclusive = _start_runs(stack, "exclusive", [{}, {}, {}])
    states = _wait_final(stack, ids + exclusive, timeout=420)
    assert all(s.is_completed() for s in states.values()), {i: s.name for i, s in states.items()}

    runs = _store(stack, "SELECT id, status FROM ktlo_run WHERE runbook = 'scale'")
    assert sorted(r.id for r in runs) == sorted(ids)
    assert {r.status for r in runs} == {"succeeded"}
    steps = _store(
        stack, "SELECT run_id, output FROM ktlo_step_run WHERE uses = 'shell' AND step_id = 'work'"
    )
    assert len(steps) == 20, "a run executed twice or not at all"
    workers = {s.output["stdout"].split()[0] for s in steps}
    assert workers == {"worker=w1", "worker=w2"}, workers
    started = _store(
        stack,
        "SELECT run_id, count(*) AS n FROM ktlo_audit WHERE action = 'run.started' GROUP BY run_id",
    )
    assert all(r.n == 1 for r in started)

    marks = [line.split() for line in ledger.read_text().splitlines()]
    assert [m[0] for m in marks] == ["start", "end"] * 3, marks  # never two at once


def test_a_killed_worker_leaves_a_crashed_run_in_history(stack: Stack, tmp_path: Path) -> None:
    _write(
        stack,
        "long",
        """
        name: long
        retry_crashed: 1
        steps:
          - id: wait
            uses: shell
            with: {command: [sleep, "600"]}
        """,
    )
    prefect_yaml = tmp_path / "prefect.yaml"
    assert cli("deployments", "--write", "--file", str(prefect_yaml), env=stack.env).returncode == 0
    assert cli("deploy", "--file", str(prefect_yaml), env=stack.env, timeout=300).returncode == 0
    for name in ("w1", "w2"):
        if name not in stack.workers or stack.workers[name].poll() is not None:
            stack.start_worker(name, tmp_path / f"{name}.log")
    [run_id] = _start_runs(stack, "long", [{}])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = _states(stack, [run_id])[run_id]
        if (
            state is not None
            and state.is_running()
            and _store(stack, f"SELECT id FROM ktlo_run WHERE id = '{run_id}'")
        ):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the long run never started")
    # The host is gone: the run's process and the workers die at once, nobody reports anything.
    infra = _client_call(stack, lambda c: c.read_flow_run(uuid.UUID(run_id))).infrastructure_pid
    run_pid = int(str(infra).rsplit(":", 1)[-1])
    for pid in [run_pid, *(p.pid for p in stack.workers.values())]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    subprocess.run(["pkill", "-9", "-f", "sleep 600"], check=False)
    final = _wait_final(stack, [run_id], timeout=300)[run_id]
    assert final.type.value == "CRASHED", final
    history = cli("history", "--runbook", "long", "--json", env=stack.env)
    assert history.returncode == 0, history.stderr
    import json

    runs = json.loads(history.stdout)["runs"]
    crashed = next(r for r in runs if r["id"] == run_id)
    assert crashed["status"] == "crashed"
    # Found dead by its missing heartbeat (Prefect's automation) or, on this machine, by its
    # released run lock (ktlo.orchestration.liveness), whichever looked first.
    assert "heartbeat" in crashed["error"] or "died" in crashed["error"], crashed["error"]
    retried = _store(
        stack,
        f"SELECT details FROM ktlo_audit WHERE action = 'run.retried' AND run_id = '{run_id}'",
    )
    assert len(retried) == 1
