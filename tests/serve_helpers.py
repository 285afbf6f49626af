"""A real `ktlo serve` process for tests, and small Prefect API helpers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from tests.helpers import KTLO


class Served:
    """`ktlo serve` in a subprocess, with its output collected line by line.

    Deployments only, unless `webhook` asks for the receiver too (which needs a token in `env`).
    """

    def __init__(self, env: dict[str, str], *args: str, webhook: bool = False):
        self.lines: list[str] = []
        receiver = [] if webhook else ["--no-webhook"]
        self.proc = subprocess.Popen(
            [KTLO, "serve", "--poll", "1", *receiver, *args],
            env={**os.environ, **env, "COLUMNS": "200"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"ktlo serve exited ({self.proc.returncode}):\n{self.output}")
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not seen in ktlo serve output:\n{self.output[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"ktlo serve did not stop after {sig}:\n{self.output[-4000:]}"
            ) from None


def api(fn: Callable[[Any], Any]) -> Any:
    """Run `await fn(client)` with a Prefect client."""
    from prefect.client.orchestration import get_client

    async def go() -> Any:
        async with get_client() as client:
            return await fn(client)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(go())
    # Called under a running loop (Playwright's sync API): use a thread of our own.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, go()).result()


def deployment(name: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    async def read(client: Any) -> Any:
        try:
            return await client.read_deployment_by_name(f"runbook/{name}")
        except ObjectNotFound:
            return None

    return api(read)


def wait_until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def flow_run(flow_run_id: UUID | str) -> Any:
    return api(lambda c: c.read_flow_run(UUID(str(flow_run_id))))


def start_run(name: str, parameters: dict[str, Any] | None = None) -> UUID:
    async def create(client: Any) -> UUID:
        dep = await client.read_deployment_by_name(f"runbook/{name}")
        run = await client.create_flow_run_from_deployment(dep.id, parameters=parameters or {})
        return UUID(str(run.id))

    return api(create)


def wait_final(flow_run_id: UUID | str, timeout: float = 60) -> Any:
    def final() -> Any:
        run = flow_run(flow_run_id)
        return run if run.state and run.state.is_final() else None

    return wait_until(final, timeout, f"flow run {flow_run_id} to finish")


def send_sigterm(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
