"""What a run says about itself: the markdown artifact and the notification text."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ktlo.runbook.model import Runbook
from ktlo.status import RunStatus, StepStatus

if TYPE_CHECKING:
    from ktlo.engine.executor import Outcome, RunInfo

ICONS: dict[str, str] = {
    StepStatus.SUCCEEDED: "✅",
    StepStatus.FAILED: "❌",
    StepStatus.SKIPPED: "⏭️",
    StepStatus.NOT_RUN: "⏹️",
}
RUN_ICONS: dict[str, str] = {
    RunStatus.SUCCEEDED: "✅",
    RunStatus.SUCCEEDED_WITH_ERRORS: "⚠️",
    RunStatus.FAILED: "❌",
    RunStatus.CRASHED: "💥",
}


def _cell(text: str | None, limit: int = 160) -> str:
    if not text:
        return ""
    one_line = " ".join(text.split())
    if len(one_line) > limit:
        one_line = one_line[: limit - 1] + "…"
    return one_line.replace("|", "\\|")


def _duration(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def markdown_summary(rb: Runbook, info: RunInfo, outcome: Outcome) -> str:
    lines = [
        f"# {RUN_ICONS.get(outcome.status, '')} Runbook `{rb.name}`: {outcome.status.replace('_', ' ')}",
        "",
        rb.description or "",
        "",
        f"Trigger: **{info.trigger}** · run `{info.run_id}`",
        "",
        "| step | uses | status | attempts | duration | result |",
        "|---|---|---|---:|---:|---|",
    ]
    for s in outcome.steps:
        status = f"{ICONS.get(s.status, '')} {s.status}" + (" (continued)" if s.continued else "")
        result = s.error if s.status in (StepStatus.FAILED, StepStatus.NOT_RUN) else s.summary
        lines.append(
            f"| `{s.step_id}` | {s.uses} | {status} | {s.attempts or ''} | "
            f"{_duration(s.duration_ms)} | {_cell(result)} |"
        )
    return "\n".join(lines) + "\n"


def notification(rb: Runbook, info: RunInfo, outcome: Outcome) -> tuple[str, str]:
    counts: dict[str, int] = {}
    for s in outcome.steps:
        counts[s.status] = counts.get(s.status, 0) + 1
    tally = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in counts.items())
    failed = outcome.failed_steps
    if outcome.status == RunStatus.SUCCEEDED:
        title = f"✅ ktlo: runbook {rb.name} succeeded"
    elif outcome.status == RunStatus.SUCCEEDED_WITH_ERRORS:
        title = f"⚠️ ktlo: runbook {rb.name} finished with {len(failed)} failed step(s)"
    else:
        where = f" at step '{failed[0].step_id}'" if failed else ""
        title = f"❌ ktlo: runbook {rb.name} FAILED{where}"
    body = [f"Runbook: {rb.name} (trigger: {info.trigger})"]
    for s in failed:
        attempts = f" after {s.attempts} attempts" if s.attempts > 1 else ""
        body.append(f"Failed step: {s.step_id} ({s.uses}){attempts}: {s.error}")
    body.append(f"Steps: {tally}")
    if info.url:
        body.append(f"Flow run: {info.url}")
    body.append(f"Details: ktlo history --runbook {rb.name}")
    return title, "\n".join(body)
