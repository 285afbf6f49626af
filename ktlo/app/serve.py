"""`ktlo serve`: one process that serves every runbook deployment (and the webhook receiver).

- Every valid runbook becomes a deployment `runbook/<name>` with its schedules, tags,
  concurrency limit and typed parameter form, served by a Prefect `Runner`.
- Runs start in their own process, forked from a warm fork server (`ktlo.orchestration.forkserver`).
- The runbooks directory (and the files of other deployment sources: DR plans) is watched:
  added or changed runbooks are (re)deployed, removed ones have their deployment deleted, a runbook that became invalid is reported and keeps
  its last good deployment.
- SIGTERM/SIGINT: stop taking new runs, let runs in flight finish for a grace period, then
  cancel what is left (recorded as cancelled, never silently dropped).
- The zombie automation and the reconciler make sure a run whose process died is marked
  crashed in Prefect and in ktlo's history (and retried when the runbook asks for it).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from ktlo.errors import KtloError, Problem
from ktlo.orchestration.deployments import source_fingerprint
from ktlo.runbook.loader import fingerprint
from ktlo.runbook.model import Runbook, Schedule
from ktlo.settings import get_settings

log = logging.getLogger("ktlo.app.serve")


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"  # the webhook receiver
    port: int = 8080
    webhook: bool = True
    token: str | None = None  # None with webhook=True means --insecure-no-auth
    limit: int | None = None  # concurrent runs in this process (None: no limit)
    poll_s: float = 2.0  # how often scheduled runs are looked for
    grace_s: float = 60.0  # how long runs in flight may finish after SIGTERM
    watch_s: float = 2.0  # how often the runbooks directory is checked
    reconcile_s: float = 15.0


def prefect_schedules(schedules: list[Schedule]) -> list[Any]:
    from prefect.schedules import Cron, Interval

    out: list[Any] = []
    for s in schedules:
        if s.cron is not None:
            out.append(Cron(s.cron, timezone=s.timezone, active=s.active))
        else:
            interval = timedelta(seconds=s.interval_s or 60)
            out.append(Interval(interval, timezone=s.timezone, active=s.active))
    return out


def _watched(runbooks_dir: Path) -> dict[str, float]:
    """What a change of redeploys: the runbooks, and the files of other deployment sources."""
    return fingerprint(runbooks_dir) | source_fingerprint(runbooks_dir)


@dataclass
class Server:
    options: ServeOptions = field(default_factory=ServeOptions)
    runner: Any = None
    deployed: dict[str, str] = field(default_factory=dict)  # runbook name → model dump
    paths: dict[str, Path] = field(default_factory=dict)  # runbook name → its file
    problems: list[Problem] = field(default_factory=list)
    stopping: bool = False
    dispatcher: Any = None
    receiver: Any = None
    extra: dict[str, str] = field(default_factory=dict)  # "flow/deployment" → its entry

    async def deploy(self, rb: Runbook) -> UUID:
        from flows.catalog import flow_for

        deployment_id: UUID = await self.runner.aadd_flow(
            flow_for(rb),
            name=rb.name,
            schedules=prefect_schedules(rb.schedules),
            concurrency_limit=rb.concurrency,
            tags=["ktlo", *rb.tags],
            description=rb.description or f"ktlo runbook {rb.name}",
            paused=False,
        )
        return deployment_id

    async def sync(self) -> None:
        """Make the served deployments match the runbooks directory."""
        from ktlo.runbook.loader import load_all

        runbooks, problems = load_all()
        for p in problems:
            if p not in self.problems:
                log.error("invalid runbook, not (re)deployed: %s", p)
        self.problems = problems
        current = {rb.name: rb for rb in runbooks}
        for name, rb in current.items():
            dump = rb.model_dump_json()
            if self.deployed.get(name) != dump:
                await self.deploy(rb)
                log.info("%s runbook %s", "updated" if name in self.deployed else "serving", name)
                self.deployed[name] = dump
                if rb.path is not None:
                    self.paths[name] = rb.path
        for name in list(self.deployed):
            path = self.paths.get(name)
            if name not in current and (path is None or not path.exists()):
                await self._undeploy(name)
        await self._sync_extra()

    async def _sync_extra(self) -> None:
        """Serve the deployments that are not runbooks (each DR plan's drill), as
        `ktlo deployments` writes them to prefect.yaml; delete those that went away."""
        import importlib
        import json

        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        from ktlo.orchestration.deployments import extra_deployments

        entries, problems = extra_deployments(get_settings().runbooks_dir)
        for p in problems:
            if p not in self.problems:
                log.error("invalid deployment source, not (re)deployed: %s", p)
        self.problems += problems
        wanted: dict[str, dict[str, Any]] = {}
        for entry in entries:
            path, attr = entry["entrypoint"].split(":")
            flow = getattr(
                importlib.import_module(path.removesuffix(".py").replace("/", ".")), attr
            )
            key = f"{flow.name}/{entry['name']}"
            wanted[key] = entry
            dump = json.dumps(entry, sort_keys=True, default=str)
            if self.extra.get(key) == dump:
                continue
            schedules = [
                Schedule(
                    cron=s.get("cron"),
                    interval_s=s.get("interval"),
                    timezone=s.get("timezone", "UTC"),
                    active=s.get("active", True),
                )
                for s in entry.get("schedules", [])
            ]
            await self.runner.aadd_flow(
                flow,
                name=entry["name"],
                parameters=entry.get("parameters", {}),
                schedules=prefect_schedules(schedules),
                tags=entry.get("tags", []),
                description=entry.get("description"),
                paused=False,
            )
            log.info("%s %s", "updated" if key in self.extra else "serving", key)
            self.extra[key] = dump
        for key in [k for k in self.extra if k not in wanted]:
            async with get_client() as client:
                try:
                    deployment = await client.read_deployment_by_name(key)
                    await client.delete_deployment(deployment.id)
                except ObjectNotFound:
                    pass
            self.extra.pop(key)
            log.info("%s went away: its deployment is deleted", key)

    async def _undeploy(self, name: str) -> None:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        from ktlo.orchestration.launch import deployment_name

        async with get_client() as client:
            try:
                deployment = await client.read_deployment_by_name(deployment_name(name))
                await client.delete_deployment(deployment.id)
            except ObjectNotFound:
                pass
        self.deployed.pop(name, None)
        self.paths.pop(name, None)
        log.info("runbook %s was removed: its deployment is deleted", name)

    async def watch(self, seen: dict[str, float]) -> None:
        """Redeploy whenever the runbooks directory (or a DR plan) changes.

        `seen` is taken before the first sync, so a file written while serving starts up
        is never missed.
        """
        directory = get_settings().runbooks_dir
        while not self.stopping:
            await asyncio.sleep(self.options.watch_s)
            now = _watched(directory)
            if now != seen:
                seen = now
                try:
                    await self.sync()
                except Exception as exc:  # keep serving what was deployed
                    log.error("reloading runbooks failed: %s", exc)

    async def reconcile_forever(self) -> None:
        from ktlo.orchestration.crashes import reconcile

        while not self.stopping:
            try:
                for run_id, status in await reconcile():
                    log.warning("run %s ended as %s (recorded)", run_id, status)
            except Exception as exc:
                log.warning("reconciling run states failed: %s", exc)
            await asyncio.sleep(self.options.reconcile_s)

    async def submit(self, flow_run_id: str) -> None:
        """Execute a flow run of a served deployment now, without waiting for the next poll.

        The incident path uses this: polling would add up to `poll_s` to every incident.
        """
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            flow_run = await client.read_flow_run(UUID(flow_run_id))
        registry = self.runner._deployment_registry
        if self.stopping or flow_run.deployment_id not in registry.get_deployment_ids():
            return  # not ours (a worker's deployment) or shutting down: the poller decides
        poller = self.runner._scheduled_run_poller
        await poller._submit_scheduled_flow_runs([flow_run], self.runner._runs_task_group)

    def in_flight(self) -> int:
        manager = getattr(self.runner, "_process_manager", None)
        return manager.flow_run_count() if manager is not None else 0

    async def shutdown(self) -> None:
        """Graceful: no new runs; runs in flight get `grace_s` to finish; then cancel the rest."""
        if self.stopping:
            return
        self.stopping = True
        log.warning(
            "shutting down: no new runs; waiting up to %.0fs for %d run(s) in flight",
            self.options.grace_s,
            self.in_flight(),
        )
        self.runner._scheduled_run_poller.stopping = True
        if self.dispatcher is not None:
            self.dispatcher.on_flow_run = None  # incidents stay queued in the outbox
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.grace_s
        while self.in_flight() and loop.time() < deadline:
            await asyncio.sleep(0.2)
        if self.in_flight():
            log.warning("cancelling %d run(s) still in flight", self.in_flight())
        if self.receiver is not None:
            self.receiver.should_exit = True
        if self.dispatcher is not None:
            self.dispatcher.stopping = True
        await self.runner.astop()

    def _start_webhook(self) -> list[asyncio.Task[Any]]:
        from ktlo.app.dashboard.web import mount
        from ktlo.incidents.outbox import Dispatcher
        from ktlo.incidents.receiver import create_app, make_server

        self.dispatcher = Dispatcher(on_flow_run=self.submit)
        app = create_app(self.options.token, dispatcher=self.dispatcher)
        mount(app.app, self.options.token)  # the dashboard, beside the receiver (inside its guard)
        self.receiver = make_server(app, self.options.host, self.options.port)
        log.info("webhook receiver on http://%s:%d/hooks/…", self.options.host, self.options.port)
        log.info("dashboard on http://%s:%d/status", self.options.host, self.options.port)
        return [
            asyncio.create_task(self.dispatcher.run_forever()),
            asyncio.create_task(self.receiver.serve()),
        ]

    async def run(self, *, started: asyncio.Event | None = None) -> None:
        from prefect.runner import Runner

        from ktlo.app.heap import freeze_startup_heap
        from ktlo.orchestration import forkserver
        from ktlo.orchestration.crashes import HEARTBEAT_S, ensure_zombie_automation

        forkserver.install()
        self.runner = Runner(
            name="ktlo-serve",
            query_seconds=self.options.poll_s,
            limit=self.options.limit,
            heartbeat_seconds=HEARTBEAT_S,
            pause_on_shutdown=True,
        )
        await ensure_zombie_automation()
        loop = asyncio.get_running_loop()
        runner_task = asyncio.create_task(self.runner.start())
        while not self.runner.started:
            if runner_task.done():
                runner_task.result()
                raise KtloError("the Prefect runner stopped before it started")
            await asyncio.sleep(0.05)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(self.shutdown()))
        seen = _watched(get_settings().runbooks_dir)
        await self.sync()
        helpers = [
            asyncio.create_task(self.watch(seen)),
            asyncio.create_task(self.reconcile_forever()),
        ]
        if self.options.webhook:
            helpers += self._start_webhook()
            self.dispatcher.runbooks.runbooks()
        freeze_startup_heap()
        log.info("serving %d runbook(s)", len(self.deployed))
        if started is not None:
            started.set()
        try:
            await runner_task
        finally:
            self.stopping = True
            for task in helpers:
                task.cancel()
