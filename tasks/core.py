"""The `log` step: put a rendered message in the run log (and in the run's record)."""

from __future__ import annotations

from typing import Literal

from prefect import get_run_logger

from ktlo.steps.registry import StepInput, StepOutput, step_task

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class LogInput(StepInput):
    message: str
    level: Literal["debug", "info", "warning", "error"] = "info"


class LogOutput(StepOutput):
    message: str


@step_task("log", LogInput, LogOutput, summarize=lambda out: out.message)
async def log_message(inputs: LogInput) -> LogOutput:
    """Log a message to the flow run's log."""
    get_run_logger().log(LEVELS[inputs.level], "%s", inputs.message)
    return LogOutput(message=inputs.message)
