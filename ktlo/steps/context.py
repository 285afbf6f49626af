"""What a running step knows about where it runs (set by the engine, read by step tasks)."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient


@dataclass
class StepContext:
    run_id: str
    runbook: str
    step_id: str
    flow_run_id: str | None = None
    url: str | None = None  # the flow run in the Prefect UI
    attempts: int = 0
    notes: list[str] = field(default_factory=list)


current_step: ContextVar[StepContext | None] = ContextVar("ktlo_current_step", default=None)


def get_step_context() -> StepContext | None:
    return current_step.get()


def flow_client() -> PrefectClient | None:
    """The flow run's own open Prefect client, when it belongs to this event loop.

    A call through it reuses the run's connection; `get_client()` outside Prefect's client
    context builds a new client, and loading its TLS trust store alone costs ~40 ms.
    """
    from prefect.client.orchestration import PrefectClient
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    client = ctx.client if ctx else None
    if not isinstance(client, PrefectClient):
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return client if client.loop is loop else None
