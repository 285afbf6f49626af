"""What a running step knows about where it runs (set by the engine, read by step tasks)."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field


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
