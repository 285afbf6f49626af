"""The outbox worker: starts the runs, emits the events and sends the notices incidents caused.

Each item is claimed with a short lease (several receivers may share one store), and its
effect is idempotent: flow runs are created with an idempotency key per (incident,
runbook), events carry a deterministic id. So an item done twice after a crash still starts
one run. When the Prefect API is down, items wait with a capped backoff and go out when it
returns; a runbook without a deployment is retried for a while, then marked failed (and
audited) rather than retried forever. An item the API refuses for good (a permanent 4xx,
e.g. 422 for an event with too many labels) is dead-lettered: never retried, logged once,
shown by `ktlo incidents` and `/healthz`. Events are trimmed to Prefect's limits first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Table, or_, select, update

from ktlo import notify
from ktlo.errors import KtloError
from ktlo.incidents.delivery import (
    backoff,
    brief,
    event_json,
    refused_for_good,
    retry_delay,
    worth_logging,
)
from ktlo.incidents.index import RunbookIndex
from ktlo.incidents.store import OutboxItem, OutboxStatus, WorkKind, count_outbox
from ktlo.orchestration.launch import NotDeployed, astart_runbook, deployment_id
from ktlo.store import audit
from ktlo.store.db import engine
from ktlo.store.models import utcnow

log = logging.getLogger("ktlo.incidents.outbox")

_OUTBOX: Table = OutboxItem.__table__  # type: ignore[attr-defined]
DEPLOYMENT_TTL_S = 30
LEASE_S = 20  # an item claimed by a receiver that died is retried after this
NOT_DEPLOYED_ATTEMPTS = 30  # about ten minutes of waiting for `ktlo serve` to deploy it
MAX_IN_FLIGHT = 50  # items claimed and not yet done, per dispatcher
# Acknowledgements first: while alerts pour in (BURST_ALERTS within BURST_WINDOW_S, the last
# one under QUIET_S ago) new run starts wait for a pause, but never longer than MAX_DEFER_S.
BURST_ALERTS = 8
BURST_WINDOW_S = 0.1
QUIET_S = 0.05
MAX_DEFER_S = 1.0

OnFlowRun = Callable[[str], Awaitable[None]]


@dataclass(frozen=True)
class Work:
    """A claimed outbox row: what the dispatcher needs of it."""

    id: int
    incident_id: str
    kind: str
    target: str
    payload: dict[str, Any]
    attempts: int


@dataclass
class Done:
    """How working off one outbox item ended (and what to audit about it)."""

    item: Work
    result: str | None = None
    error: str | None = None
    retry_in: float | None = None
    failed: bool = False
    dead: bool = False  # refused for good by the Prefect API
    audit: tuple[str, str, dict[str, Any], str | None] | None = None


class Dispatcher:
    def __init__(
        self,
        runbooks: RunbookIndex | None = None,
        on_flow_run: OnFlowRun | None = None,
        concurrency: int = 4,  # Prefect calls at once; more only thrash a SQLite-backed server
    ):
        self.runbooks = runbooks or RunbookIndex()
        self.on_flow_run = on_flow_run
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(concurrency)
        self._client: Any = None  # one Prefect client for the dispatcher's life
        self._deployments: dict[str, tuple[Any, float]] = {}  # runbook → (deployment id, when)
        self._inflight: dict[int, asyncio.Future[None]] = {}  # outbox id → its task
        self._outcomes: list[tuple[list[Done], asyncio.Future[None]]] = []
        self._recorder: asyncio.Task[None] | None = None
        self._received: deque[float] = deque(maxlen=BURST_ALERTS)
        self.stopping = False

    def wake(self) -> None:
        self._wake.set()

    def received(self) -> None:
        """The receiver stored an alert: work may be due, and a burst may be under way."""
        self._received.append(time.monotonic())
        self._wake.set()

    def bursting(self) -> bool:
        """Alerts are arriving faster than one run start costs (a single alert never is)."""
        recent = self._received
        if len(recent) < BURST_ALERTS:
            return False
        last = recent[-1]
        return time.monotonic() - last < QUIET_S and last - recent[0] < BURST_WINDOW_S

    async def _yield_to_receiver(self) -> None:
        """Let a burst's acknowledgements go first; its runs start in pauses, at least each second.

        Creating a flow run costs the receiver's process more CPU than storing an alert, and
        on a small host the Prefect server shares its cores.
        """
        deadline = time.monotonic() + MAX_DEFER_S
        while self.bursting() and time.monotonic() < deadline:
            await asyncio.sleep(QUIET_S)

    def _claim(self, batch: int = 50) -> list[Work]:
        """Lease due items to this dispatcher (Core statements: this runs for every alert)."""
        now = utcnow()
        t = _OUTBOX
        free = or_(t.c.claimed_until.is_(None), t.c.claimed_until < now)
        columns = (t.c.id, t.c.incident_id, t.c.kind, t.c.target, t.c.payload, t.c.attempts)
        with engine().begin() as conn:
            due = conn.execute(
                select(*columns)
                .where(t.c.status == OutboxStatus.PENDING, t.c.next_attempt_at <= now, free)
                .order_by(t.c.id)
                .limit(batch)
            ).all()
            if not due:
                return []
            taken = {
                row[0]
                for row in conn.execute(
                    update(t)
                    .where(t.c.id.in_([row[0] for row in due]), free)
                    .values(claimed_until=now + timedelta(seconds=LEASE_S))
                    .returning(t.c.id)
                )
            }
        return [Work(*row) for row in due if row[0] in taken]

    def _apply(self, outcomes: list[Done]) -> None:
        """Record outcomes (and their audit events) in one transaction."""
        t = _OUTBOX
        now = utcnow()
        entries: list[audit.Entry] = []
        with engine().begin() as conn:
            for o in outcomes:
                values: dict[str, Any] = {"attempts": t.c.attempts + 1, "claimed_until": None}
                if o.retry_in is not None and not o.failed:
                    values.update(
                        next_attempt_at=now + timedelta(seconds=o.retry_in), error=o.error
                    )
                else:
                    ended = OutboxStatus.DONE
                    if o.failed:
                        ended = OutboxStatus.DEAD if o.dead else OutboxStatus.FAILED
                    values.update(
                        status=ended,
                        done_at=now,
                        result=o.result,
                        error=o.error,
                    )
                conn.execute(update(t).where(t.c.id == o.item.id).values(**values))
                if o.audit is not None:
                    action, subject, details, run_id = o.audit
                    entries.append(audit.Entry(action, subject, details, run_id, "ktlo-dispatch"))
            audit.record_many(entries, conn)

    async def _finish(self, *outcomes: Done) -> None:
        """Record outcomes; those that end meanwhile are written in the same transaction."""
        recorded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outcomes.append((list(outcomes), recorded))
        if self._recorder is None or self._recorder.done():
            self._recorder = asyncio.create_task(self._record_outcomes())
        await recorded

    async def _record_outcomes(self) -> None:
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            try:
                await asyncio.to_thread(self._apply, [o for outcomes, _ in batch for o in outcomes])
            except Exception as exc:
                for _, recorded in batch:
                    recorded.set_exception(exc)
            else:
                for _, recorded in batch:
                    recorded.set_result(None)

    async def process(self, item: Work) -> None:
        async with self._limit:
            try:
                if item.kind == WorkKind.START_RUN:
                    await self._start_run(item)
                elif item.kind == WorkKind.RESOLVED_NOTICE:
                    await asyncio.to_thread(self._notice, item)
                    await self._finish(Done(item, result="sent"))
                else:
                    await self._finish(
                        Done(item, error=f"unknown outbox kind {item.kind}", failed=True)
                    )
            except NotDeployed as exc:
                if item.attempts + 1 >= NOT_DEPLOYED_ATTEMPTS:
                    details = {"incident_id": item.incident_id, "error": str(exc)}
                    audit_event = ("incident.run_failed", item.target, details, None)
                    await self._finish(Done(item, error=str(exc), failed=True, audit=audit_event))
                    log.error("incident %s: %s", item.incident_id, exc)
                else:
                    await self._finish(
                        Done(item, error=str(exc), retry_in=backoff(item.attempts + 1) + 5)
                    )
            except Exception as exc:  # the Prefect API is down, slow, or refuses the item
                await self._failed(item, exc)

    async def _failed(self, item: Work, exc: BaseException) -> None:
        """Dead-letter an item the API refuses for good; otherwise retry it later."""
        message = brief(exc)
        target = item.target[:200]
        if refused_for_good(exc):
            details = {"incident_id": item.incident_id, "kind": item.kind, "error": message}
            dead = ("incident.outbox_dead", item.target, details, None)
            await self._finish(Done(item, error=message, failed=True, dead=True, audit=dead))
            log.error(
                "outbox item %s (%s %s) refused by the Prefect API, dead-lettered: %s",
                item.id,
                item.kind,
                target,
                message,
            )
            return
        retry_in = retry_delay(exc, item.attempts + 1)
        await self._finish(Done(item, error=message, retry_in=retry_in))
        if worth_logging(item.attempts + 1):
            log.warning(
                "outbox item %s (%s %s) will be retried in %.0f s: %s",
                item.id,
                item.kind,
                target,
                retry_in,
                message,
            )

    async def _deployment(self, runbook: str) -> Any:
        loop = asyncio.get_running_loop()
        cached = self._deployments.get(runbook)
        if cached is not None and loop.time() - cached[1] < DEPLOYMENT_TTL_S:
            return cached[0]
        found = await deployment_id(self._client, runbook)
        self._deployments[runbook] = (found, loop.time())
        return found

    async def _start_run(self, item: Work) -> None:
        from prefect.exceptions import ObjectNotFound

        try:
            flow_run_id = await astart_runbook(
                item.target,
                params={"incident": item.payload},
                idempotency_key=f"incident:{item.incident_id}:{item.target}",
                tags=["ktlo-incident"],
                client=self._client,
                deployment=await self._deployment(item.target),
            )
        except ObjectNotFound:  # the deployment went away since it was cached
            self._deployments.pop(item.target, None)
            raise
        details = {"incident_id": item.incident_id, "runbook": item.target}
        started = ("incident.run_started", str(item.payload.get("key", "")), details, flow_run_id)
        await self._finish(Done(item, result=flow_run_id, audit=started))
        if self.on_flow_run is not None:
            try:
                await self.on_flow_run(flow_run_id)
            except Exception as exc:  # the poller will still pick it up
                log.warning("could not hand flow run %s to the runner: %s", flow_run_id, exc)

    async def emit_events(self, items: list[Work]) -> None:
        """All events of a batch in one request (self-hosted servers take POST /api/events)."""
        if not items:
            return
        try:
            response = await self._client._client.post(
                "/events", json=[event_json(i.incident_id, i.target, i.payload) for i in items]
            )
            response.raise_for_status()
        except Exception as exc:
            if refused_for_good(exc) and len(items) > 1:
                for one in items:  # find the one the API refuses; the others go out
                    await self.emit_events([one])
                return
            if refused_for_good(exc):
                await self._failed(items[0], exc)
                return
            message = brief(exc)
            retry_in = retry_delay(exc, max(i.attempts for i in items) + 1)
            await self._finish(*(Done(i, error=message, retry_in=retry_in) for i in items))
            if any(worth_logging(i.attempts + 1) for i in items):
                log.warning(
                    "%d event(s) will be retried in %.0f s: %s", len(items), retry_in, message
                )
            return
        await self._finish(*(Done(i, result="emitted") for i in items))

    def _notice(self, item: Work) -> None:
        rb = self.runbooks.get(item.target)
        if rb is None:
            return
        targets = list(dict.fromkeys([*rb.notify.on_failure, *rb.notify.on_success]))
        if not targets:
            return
        incident = item.payload
        title = f"✅ resolved: {incident.get('summary', incident.get('key'))}"
        body = (
            f"Incident {incident.get('key')} ({incident.get('source')}) is resolved.\n"
            f"Runbook {rb.name} was started for it; see: ktlo incidents show {incident.get('key')}"
        )
        try:
            notify.send(targets, title, body)
        except KtloError as exc:
            log.error("resolved notice for %s: %s", item.target, exc)

    async def run_forever(self, idle_s: float = 1.0) -> None:
        from ktlo.orchestration.client import quick_client

        async with quick_client() as client:
            self._client = client
            try:
                await self._loop(idle_s)
            finally:
                for task in list(self._inflight.values()):
                    task.cancel()  # their items are retried once their lease ends

    def _spawn(self, work: Awaitable[None], items: list[Work]) -> None:
        task = asyncio.ensure_future(work)
        for item in items:
            self._inflight[item.id] = task

        def done(_task: asyncio.Future[None]) -> None:
            for item in items:
                self._inflight.pop(item.id, None)
            self._wake.set()  # room for more

        task.add_done_callback(done)

    async def _loop(self, idle_s: float) -> None:
        """Claim due items and start working them off without waiting for earlier ones.

        A slow call (a run start while the Prefect server is busy) must not hold back the
        incidents that arrive meanwhile: each item is its own task, bounded by `concurrency`.
        """
        while not self.stopping:
            await self._yield_to_receiver()
            self._wake.clear()
            room = MAX_IN_FLIGHT - len(self._inflight)
            items: list[Work] = []
            if room > 0:
                try:
                    claimed = await asyncio.to_thread(self._claim, room)
                except Exception as exc:
                    log.warning("outbox: cannot read the store: %s", exc)
                    claimed = []
                items = [i for i in claimed if i.id not in self._inflight]
            events = [i for i in items if i.kind == WorkKind.EVENT]
            if events:
                self._spawn(self.emit_events(events), events)
            for item in items:
                if item.kind != "event":
                    self._spawn(self.process(item), [item])
            if items and len(items) == room:
                continue  # a full batch: more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=idle_s)

    def pending(self) -> int:
        return count_outbox(OutboxStatus.PENDING)
