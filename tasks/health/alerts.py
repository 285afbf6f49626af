"""Notification text for whoever is woken up at 3 a.m., and its delivery through apprise.

A notice names the check and what it looks at, lists the failing conditions with their
actual values, says since when, what remediation started, and links the Prefect flow run
that saw it. Delivery goes through `ktlo.notify`, which redacts secrets and resolves named
channels, on threads so a slow target does not hold up the sweep's event loop.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from ktlo import notify, secrets
from ktlo.errors import KtloError
from tasks.health.ledger import Decision, Scope

ICONS = {"failing": "🔴", "degraded": "🟡", "resolved": "✅", "reminder": "🔁"}


def when(ts: datetime | None) -> str:
    return f"{ts:%Y-%m-%d %H:%M:%S} UTC" if ts else "?"


def lasted(start: datetime | None, end: datetime) -> str:
    if start is None:
        return "?"
    seconds = int((end - start).total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def compose(d: Decision, scope: Scope, now: datetime) -> tuple[str, str]:
    """(title, body) of the notice a decision calls for."""
    check, memory, notice = d.check, d.step.memory, d.step.notice
    failing = [c for c in d.judged.conditions if not c.ok]
    first = failing[0] if failing else None
    reason = f"{first.condition} (actual {first.actual})" if first else (d.judged.error or "failed")
    if notice == "resolved":
        title = f"✅ RESOLVED: {check.name} was {d.step.previous} for {lasted(d.step.previous_since, now)}"
    elif notice == "reminder":
        title = f"🔁 STILL FAILING: {check.name} for {lasted(memory.streak_since, now)}: {reason}"
    else:
        label = "FAILING" if notice == "failing" else "DEGRADED"
        title = f"{ICONS.get(str(notice), '')} {label}: {check.name}: {reason}"

    kind = check.type  # type: ignore[attr-defined]
    lines = [f"Check: {check.name} ({kind} {check.target()})"]
    if check.description:
        lines.append(f"About: {check.description}")
    lines.append(f"Runbook: {scope.runbook}, step {scope.step_id}")
    if notice == "resolved":
        lines.append(f"Recovered: {when(now)}; all critical conditions pass")
        lines.append(f"Was {d.step.previous} since {when(d.step.previous_since)}")
    else:
        lines.append(f"State: {memory.state} since {when(memory.since)}")
        lines.append(
            f"Failing since: {when(memory.streak_since)} "
            f"({memory.bad_streak} bad result(s) in a row; threshold {check.failure_threshold})"
        )
        if failing:
            lines.append("Failing conditions:")
            for c in failing:
                mark = "✗" if c.severity == "critical" else "⚠"
                lines.append(f"  {mark} {c.condition}  (actual: {c.actual})")
        if d.judged.error:
            lines.append(f"Error: {d.judged.error}")
    if d.remediation is not None and notice in ("failing", "reminder"):
        r = d.remediation
        run = f" (flow run {r.flow_run_id})" if r.flow_run_id else ""
        detail = f": {r.error}" if r.error else ""
        lines.append(f"Remediation: runbook {r.runbook} {r.status}{run}{detail}")
    if scope.url:
        lines.append(f"Flow run: {scope.url}")
    lines.append(f"Status of all checks: ktlo status --runbook {scope.runbook}")
    return secrets.redact(title), secrets.redact("\n".join(lines))


async def deliver(d: Decision, title: str, body: str) -> None:
    """Send to the check's targets; the outcome is kept on the decision, never raised."""
    if not d.check.alert:
        return
    try:
        delivery = await asyncio.to_thread(notify.send, d.check.alert, title, body)
    except KtloError as exc:
        d.failed_to.append(secrets.redact(str(exc)))
        return
    d.sent_to.extend(delivery.sent)
    d.failed_to.extend(delivery.failed)
