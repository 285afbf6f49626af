"""The `health.sweep` step: every check probed concurrently inside ONE Prefect task.

A Prefect task per check costs milliseconds of orchestration each (SPEC §11); a sweep is
one task that probes with asyncio (shared HTTP clients per origin; a bound on probes in
flight), then advances each check's alert state in one transaction, starts remediation,
sends notifications and publishes a table artifact of the sweep.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import datetime
from typing import Any

from ktlo import secrets
from ktlo.errors import StepFailed
from ktlo.steps.context import flow_client, get_step_context
from ktlo.steps.registry import step_task
from ktlo.store.models import utcnow
from tasks.health import alerts, ledger, remediation
from tasks.health.ledger import Decision, Judged, Scope
from tasks.health.prober import Prober
from tasks.health.results import CheckResult, SweepOutput, judge
from tasks.health.sweep_input import SweepInput
from tasks.health.validate import validate_sweep

ORDER = {"FAILING": 0, "DEGRADED": 1, "OK": 2}
MAX_LOGGED = 50


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("ktlo.health")


def _scope() -> Scope:
    ctx = get_step_context()
    if ctx is not None:
        return Scope(ctx.runbook, ctx.step_id, run_id=ctx.flow_run_id, url=ctx.url)
    # Called as a plain Prefect task in a hand-written flow: state is keyed by the flow's name.
    from prefect.runtime import flow_run

    return Scope(
        runbook=str(flow_run.flow_name or "adhoc"),
        step_id="health.sweep",
        run_id=str(flow_run.id) if flow_run.id else None,
        url=flow_run.ui_url,
    )


def summarize(out: SweepOutput) -> str:
    text = f"{out.total} checks: {out.ok} OK"
    if out.degraded:
        text += f", {out.degraded} DEGRADED"
    if out.failing:
        names = [c.name for c in out.checks if c.state == "FAILING"][:5]
        text += f", {out.failing} FAILING ({', '.join(names)})"
    return text


@step_task("health.sweep", SweepInput, SweepOutput, summarize=summarize, validate=validate_sweep)
async def health_sweep(inputs: SweepInput) -> SweepOutput:
    """Probe health checks concurrently; keep alert state, notify on changes, remediate."""
    started = time.perf_counter()
    scope = _scope()
    async with Prober(inputs.concurrency, inputs.connections_per_host) as prober:
        observations = await asyncio.gather(*(prober.observe(c) for c in inputs.checks))
    judged = [
        Judged(check, *judge(check, obs), error=obs.error, duration_ms=obs.duration_ms)
        for check, obs in zip(inputs.checks, observations, strict=True)
    ]
    now = utcnow()
    decisions = await asyncio.to_thread(ledger.record, scope, judged, now)
    titles = await _act(decisions, scope, now)

    results = [_result(d) for d in decisions]
    states = [r.state for r in results]
    out = SweepOutput(
        total=len(results),
        ok=states.count("OK"),
        degraded=states.count("DEGRADED"),
        failing=states.count("FAILING"),
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
        checks=results,
    )
    _log(out)
    await asyncio.gather(asyncio.to_thread(ledger.finish, decisions, titles), _publish(out, scope))
    if inputs.fail_on_failure:
        bad = [r.name for r in results if not r.ok]
        if bad:
            raise StepFailed(f"{len(bad)} check(s) failed: {', '.join(bad[:10])}")
    return out


async def _act(decisions: list[Decision], scope: Scope, now: datetime) -> dict[str, str]:
    """Start remediation, follow earlier remediation runs, then send the notices."""
    starting = [d for d in decisions if d.step.remediate and d.check.remediate]
    started = await asyncio.gather(
        *(
            remediation.start(str(d.check.remediate), d.key, d.step.memory.since or now)
            for d in starting
        )
    )
    await remediation.refresh([d.remediation for d in decisions if d.remediation])
    for d, r in zip(starting, started, strict=True):
        d.remediation = r

    titles: dict[str, str] = {}
    sends = []
    for d in decisions:
        if d.step.notice is None:
            continue
        title, body = alerts.compose(d, scope, now)
        titles[d.key] = title
        sends.append(alerts.deliver(d, title, body))
    await asyncio.gather(*sends)
    return titles


def _result(d: Decision) -> CheckResult:
    m, j = d.step.memory, d.judged
    return CheckResult(
        name=d.check.name,
        type=d.check.type,  # type: ignore[attr-defined]
        target=secrets.redact(d.check.target()),
        ok=j.health != "failing",
        health=j.health,
        state=m.state,
        previous_state=d.step.previous,
        since=m.since or utcnow(),
        failing_since=m.streak_since,
        duration_ms=j.duration_ms,
        conditions=j.conditions,
        error=secrets.redact(j.error),
        suppressed=d.suppressed,
        notice=d.step.notice,
        notified=d.sent_to,
        notify_failed=d.failed_to,
        remediation=d.remediation,
    )


def _detail(r: CheckResult) -> str:
    failing = [f"{c.condition} (actual {c.actual})" for c in r.conditions if not c.ok]
    parts = [*failing, *([r.error] if r.error else [])]
    if r.suppressed:
        parts.append(f"alerts suppressed: {r.suppressed}")
    if r.remediation:
        parts.append(f"remediation {r.remediation.runbook}: {r.remediation.status}")
    return "; ".join(parts)


def _log(out: SweepOutput) -> None:
    logger = _logger()
    logger.info("health sweep: %s in %.0f ms", summarize(out), out.duration_ms)
    unhealthy = [r for r in out.checks if r.health != "ok" or r.state != "OK"]
    for r in unhealthy[:MAX_LOGGED]:
        logger.warning("%s %s (%s): %s", r.state, r.name, r.health, _detail(r))
    if len(unhealthy) > MAX_LOGGED:
        logger.warning(
            "… and %d more unhealthy checks (see the artifact)", len(unhealthy) - MAX_LOGGED
        )


def _artifact_key(scope: Scope) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", f"health-{scope.runbook}-{scope.step_id}".lower())[:100]


async def _publish(out: SweepOutput, scope: Scope) -> None:
    """A table artifact per sweep: check, state, latency, since (failing checks first)."""
    from prefect.artifacts import TableArtifact

    rows: list[dict[str, Any]] = [
        {
            "check": r.name,
            "state": r.state,
            "this probe": r.health,
            "latency_ms": r.duration_ms,
            "since": f"{r.since:%Y-%m-%d %H:%M:%S} UTC",
            "detail": _detail(r),
        }
        for r in sorted(out.checks, key=lambda r: (ORDER[r.state], r.name))
    ]
    try:
        await TableArtifact(
            table=secrets.redact(rows),
            key=_artifact_key(scope),
            description=f"Health sweep {scope.runbook}/{scope.step_id}: {summarize(out)}",
        ).acreate(client=flow_client())
    except Exception as exc:  # the artifact is a view; it must never fail a sweep
        _logger().warning("could not publish the health artifact: %s", exc)
