"""The `notify` step: send a message through apprise to URLs or named channels."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from ktlo import notify
from ktlo.errors import StepFailed
from ktlo.runbook.templating import is_template
from ktlo.steps.registry import StepInput, StepOutput, step_task


class NotifyInput(StepInput):
    to: list[str] = Field(min_length=1, description="apprise URLs or channel names")
    title: str
    body: str = ""
    fail_on_error: bool = True


class NotifyOutput(StepOutput):
    sent: list[str]
    failed: list[str]


def _validate(data: dict[str, Any], _runbook: Any) -> list[tuple[tuple[str | int, ...], str]]:
    problems: list[tuple[tuple[str | int, ...], str]] = []
    targets = data.get("to")
    if isinstance(targets, list):
        for i, target in enumerate(targets):
            if isinstance(target, str) and not is_template(target):
                try:
                    notify.resolve_channels([target])
                except notify.ChannelError as exc:
                    problems.append((("to", i), str(exc)))
    return problems


def summarize(out: NotifyOutput) -> str:
    text = f"sent to {', '.join(out.sent) or 'nobody'}"
    return text + (f"; FAILED: {', '.join(out.failed)}" if out.failed else "")


@step_task("notify", NotifyInput, NotifyOutput, summarize=summarize, validate=_validate)
async def send_notification(inputs: NotifyInput) -> NotifyOutput:
    """Send a notification; fail when a target could not be reached (unless told not to)."""
    delivery = await asyncio.to_thread(notify.send, inputs.to, inputs.title, inputs.body)
    if delivery.failed and inputs.fail_on_error:
        raise StepFailed(f"notification not delivered to: {', '.join(delivery.failed)}")
    return NotifyOutput(sent=delivery.sent, failed=delivery.failed)
