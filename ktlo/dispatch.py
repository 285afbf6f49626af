"""The outbox worker: starts the runs, emits the events and sends the notices incidents caused.

Each item is claimed with a short lease (several receivers may share one store), and its
effect is idempotent: flow runs are created with an idempotency key per (incident,
runbook), events carry a deterministic id. So an item done twice after a crash still starts
one run. When the Prefect API is down, items wait with a capped backoff and go out when it
returns; a runbook without a deployment is retried for a while, then marked failed (and
audited) rather than retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, update
from sqlmodel import col, select

from ktlo import audit, notify
from ktlo.errors import KtloError
from ktlo.intake import RunbookIndex
from ktlo.launch import NotDeployed, astart_runbook
from ktlo.store.db import engine, session
from ktlo.store.incidents import OutboxItem
from ktlo.store.models import utcnow

log = logging.getLogger("ktlo.dispatch")

EVENT_NAMESPACE = uuid.UUID("5b6a3c0e-7f61-4a51-9d2e-6c1b1f0a2b7d")
LEASE_S = 60
MAX_BACKOFF_S = 30
NOT_DEPLOYED_ATTEMPTS = 30  # about ten minutes of waiting for `ktlo serve` to deploy it

OnFlowRun = Callable[[str], Awaitable[None]]


def _backoff(attempts: int) -> float:
    return float(min(MAX_BACKOFF_S, 2 ** max(0, attempts - 1) * 0.5))


class Dispatcher:
    def __init__(
        self,
        runbooks: RunbookIndex | None = None,
        on_flow_run: OnFlowRun | None = None,
        concurrency: int = 8,
    ):
        self.runbooks = runbooks or RunbookIndex()
        self.on_flow_run = on_flow_run
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(concurrency)
        self.stopping = False

    def wake(self) -> None:
        self._wake.set()

    def _claim(self, batch: int = 50) -> list[OutboxItem]:
        now = utcnow()
        lease = now + timedelta(seconds=LEASE_S)
        table = OutboxItem.__table__  # type: ignore[attr-defined]
        claimed: list[OutboxItem] = []
        with session() as s:
            due = s.exec(
                select(OutboxItem)
                .where(OutboxItem.status == "pending")
                .where(col(OutboxItem.next_attempt_at) <= now)
                .where(
                    or_(
                        col(OutboxItem.claimed_until).is_(None), col(OutboxItem.claimed_until) < now
                    )
                )
                .order_by(col(OutboxItem.id))
                .limit(batch)
            ).all()
            for item in due:
                taken = s.execute(
                    update(table)
                    .where(table.c.id == item.id)
                    .where(or_(table.c.claimed_until.is_(None), table.c.claimed_until < now))
                    .values(claimed_until=lease)
                )
                if taken.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(item)
        return claimed

    def _finish(
        self,
        item: OutboxItem,
        *,
        result: str | None = None,
        error: str | None = None,
        retry_in: float | None = None,
        failed: bool = False,
    ) -> None:
        with session() as s:
            row = s.get(OutboxItem, item.id)
            if row is None:
                return
            row.attempts += 1
            row.claimed_until = None
            if retry_in is not None and not failed:
                row.next_attempt_at = utcnow() + timedelta(seconds=retry_in)
                row.error = error
            else:
                row.status = "failed" if failed else "done"
                row.done_at = utcnow()
                row.result = result
                row.error = error
            s.add(row)

    async def process(self, item: OutboxItem) -> None:
        async with self._limit:
            try:
                if item.kind == "start_run":
                    await self._start_run(item)
                elif item.kind == "event":
                    await self._emit(item)
                    self._finish(item, result="emitted")
                elif item.kind == "resolved_notice":
                    await asyncio.to_thread(self._notice, item)
                    self._finish(item, result="sent")
                else:
                    self._finish(item, error=f"unknown outbox kind {item.kind}", failed=True)
            except NotDeployed as exc:
                if item.attempts + 1 >= NOT_DEPLOYED_ATTEMPTS:
                    self._finish(item, error=str(exc), failed=True)
                    audit.record(
                        "incident.run_failed",
                        item.target,
                        details={"incident_id": item.incident_id, "error": str(exc)},
                    )
                    log.error("incident %s: %s", item.incident_id, exc)
                else:
                    self._finish(item, error=str(exc), retry_in=_backoff(item.attempts + 1) + 5)
            except Exception as exc:  # the Prefect API is down or slow: try again later
                message = f"{type(exc).__name__}: {exc}"
                self._finish(item, error=message, retry_in=_backoff(item.attempts + 1))
                log.warning(
                    "outbox item %s (%s %s) will be retried: %s",
                    item.id,
                    item.kind,
                    item.target,
                    message,
                )

    async def _start_run(self, item: OutboxItem) -> None:
        flow_run_id = await astart_runbook(
            item.target,
            params={"incident": item.payload},
            idempotency_key=f"incident:{item.incident_id}:{item.target}",
            tags=["ktlo-incident"],
        )
        self._finish(item, result=flow_run_id)
        audit.record(
            "incident.run_started",
            item.payload.get("key", ""),
            run_id=flow_run_id,
            details={"incident_id": item.incident_id, "runbook": item.target},
            actor="ktlo-dispatch",
        )
        if self.on_flow_run is not None:
            try:
                await self.on_flow_run(flow_run_id)
            except Exception as exc:  # the poller will still pick it up
                log.warning("could not hand flow run %s to the runner: %s", flow_run_id, exc)

    async def _emit(self, item: OutboxItem) -> None:
        from prefect.client.orchestration import get_client

        incident: dict[str, Any] = item.payload
        labels = {
            k: str(v)
            for k, v in (incident.get("labels") or {}).items()
            if not k.startswith("prefect.")
        }
        event = {
            "id": str(uuid.uuid5(EVENT_NAMESPACE, f"{item.incident_id}:{item.target}")),
            "occurred": utcnow().isoformat(),
            "event": item.target,
            "resource": {
                **labels,
                "prefect.resource.id": f"ktlo.incident.{item.incident_id}",
                "prefect.resource.name": str(incident.get("summary", ""))[:200],
                "ktlo.incident.key": str(incident.get("key", "")),
                "ktlo.incident.source": str(incident.get("source", "")),
                "ktlo.incident.severity": str(incident.get("severity") or ""),
            },
            "related": [],
            "payload": {"incident": incident},
        }
        async with get_client() as client:
            response = await client._client.post("/events", json=[event])
            response.raise_for_status()

    def _notice(self, item: OutboxItem) -> None:
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
        while not self.stopping:
            try:
                items = await asyncio.to_thread(self._claim)
            except Exception as exc:
                log.warning("outbox: cannot read the store: %s", exc)
                items = []
            if items:
                await asyncio.gather(*(self.process(item) for item in items))
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=idle_s)

    def pending(self) -> int:
        from sqlmodel import func

        with session() as s:
            return int(
                s.exec(
                    select(func.count())
                    .select_from(OutboxItem)
                    .where(OutboxItem.status == "pending")
                ).one()
            )


def store_ok() -> bool:
    try:
        with engine().connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True
    except Exception:
        return False
