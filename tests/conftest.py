"""Shared fixtures: one real Prefect server per test session, a fresh ktlo state per test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Receiver, start_receiver
from tests.labs.conftest_fleet import fleet, fleet_lab  # noqa: F401

IN_CI = bool(os.environ.get("CI"))


def service_up(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def require_service(name: str, port: int) -> None:
    """Skip on a laptop without the service; in CI a missing service is a failure."""
    if service_up(port):
        return
    if IN_CI:
        pytest.fail(f"{name} on 127.0.0.1:{port} is not running (CI must start it: .ci/services)")
    pytest.skip(f"{name} on 127.0.0.1:{port} is not running")


def unavailable(reason: str) -> None:
    """Skip on a laptop that lacks a tool or permission; in CI the lack is a failure."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server for the whole session (starting one costs 15-25 s)."""
    from ktlo.orchestration import local_server
    from ktlo.settings import reload_settings

    external = os.environ.get("KTLO_TEST_PREFECT_API_URL")
    if external:
        os.environ["PREFECT_API_URL"] = external
        local_server._apply_to_loaded_prefect(external)
        yield external
        return
    home = tmp_path_factory.mktemp("prefect-home")
    # Some tests leave runs scheduled on purpose (deployments nobody serves); marking those
    # late makes the SQLite-backed server fight itself for its lock.
    os.environ.setdefault("PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED", "false")
    previous_home = os.environ.get("KTLO_HOME")
    os.environ["KTLO_HOME"] = str(home)
    reload_settings()
    info = local_server.start(port=None, quiet=True)  # any free port: sessions may overlap
    os.environ["PREFECT_API_URL"] = info.api_url
    local_server._apply_to_loaded_prefect(info.api_url)
    if previous_home is None:
        os.environ.pop("KTLO_HOME", None)
    else:
        os.environ["KTLO_HOME"] = previous_home
    try:
        yield info.api_url
    finally:
        _drain_prefect_workers()
        os.environ["KTLO_HOME"] = str(home)
        reload_settings()
        local_server.stop()
        if previous_home is None:
            os.environ.pop("KTLO_HOME", None)
        reload_settings()


def _drain_prefect_workers() -> None:
    """Send queued logs and events before the server goes away (no noise at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):  # best effort at teardown
            worker.drain_all(timeout=5)


@dataclass
class Home:
    """A fresh ktlo state directory and runbooks directory for one test."""

    path: Path
    runbooks: Path

    @property
    def env(self) -> dict[str, str]:
        env = {"KTLO_HOME": str(self.path), "KTLO_RUNBOOKS": str(self.runbooks)}
        if os.environ.get("PREFECT_API_URL"):
            env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
        return env

    def runbook(self, name: str, text: str) -> Path:
        path = self.runbooks / f"{name}.yaml"
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Home]:
    from ktlo.settings import reload_settings
    from ktlo.store.db import reset_engines

    state = tmp_path / "ktlo-home"
    runbooks = tmp_path / "runbooks"
    state.mkdir()
    runbooks.mkdir()
    monkeypatch.setenv("KTLO_HOME", str(state))
    monkeypatch.setenv("KTLO_RUNBOOKS", str(runbooks))
    for var in ("KTLO_DATABASE_URL", "KTLO_CHANNELS", "KTLO_AUDIT_KEY"):
        monkeypatch.delenv(var, raising=False)
    reset_engines()
    reload_settings()
    yield Home(state, runbooks)
    reset_engines()
    monkeypatch.undo()
    reload_settings()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.close()


@dataclass
class RunResult:
    state: Any
    run: Any
    steps: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.run.status) if self.run else "no record"


def run_runbook(ref: str | Path, **params: Any) -> RunResult:
    """Run the generic runbook flow in this process and read back what the store recorded."""
    from flows.runbook import runbook_flow
    from ktlo.store.runs import get_run, steps_of

    state = asyncio.run(runbook_flow(runbook=str(ref), **params, return_state=True))
    run_id = str(state.state_details.flow_run_id)
    return RunResult(
        state=state, run=get_run(run_id), steps={s.step_id: s for s in steps_of(run_id)}
    )


@pytest.fixture
def run(prefect_api: str, home: Home) -> Any:
    return run_runbook
