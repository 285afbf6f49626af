"""What a sweep reports: one result per check, and how a probe's facts become a verdict."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ktlo.steps.registry import StepOutput
from tasks.health.checks import CheckBase
from tasks.health.conditions import ConditionError, parse, show
from tasks.health.prober import Observation
from tasks.health.state import Health, Notice, State


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConditionOutcome(_Model):
    condition: str
    ok: bool
    actual: str
    severity: Literal["critical", "warning"] = "critical"


class Remediation(_Model):
    runbook: str
    status: (
        str  # started | not_deployed | not_started | scheduled | running | completed | failed | ...
    )
    flow_run_id: str | None = None
    started_at: datetime | None = None
    error: str | None = None


class CheckResult(_Model):
    name: str
    type: str
    target: str
    ok: bool  # this probe: every critical condition passed (and no error after connecting)
    health: Health  # this probe: ok | degraded | failing
    state: State  # the alert state after this probe
    previous_state: State
    since: datetime  # when the check entered `state`
    failing_since: datetime | None = None  # first of the current run of bad results
    duration_ms: float
    conditions: list[ConditionOutcome]
    error: str | None = None
    suppressed: str | None = None  # why notifications are held back
    notice: Notice | None = None  # the notification this sweep sent (or would have)
    notified: list[str] = []
    notify_failed: list[str] = []
    remediation: Remediation | None = None


class SweepOutput(StepOutput):
    total: int
    ok: int
    degraded: int
    failing: int
    duration_ms: float
    checks: list[CheckResult]


def judge(check: CheckBase, obs: Observation) -> tuple[Health, list[ConditionOutcome]]:
    """The probe's verdict: failing if a critical condition fails, degraded if only warnings do.

    An error after the target answered (a failed query, a broken command) fails the check
    even when the conditions only ask whether it connected; an error connecting is left to
    the conditions, so `connected == false` can assert that a port is closed.
    """
    outcomes: list[ConditionOutcome] = []
    for severity, texts in (("critical", check.critical()), ("warning", check.warn)):
        for text in texts:
            try:
                condition = parse(text, check.type)  # type: ignore[attr-defined]
            except ConditionError as exc:
                outcomes.append(
                    ConditionOutcome(
                        condition=text, ok=False, actual=f"<invalid: {exc}>", severity=severity
                    )
                )
                continue
            passed, actual = condition.evaluate(obs.facts)
            outcomes.append(
                ConditionOutcome(condition=text, ok=passed, actual=show(actual), severity=severity)
            )
    errored = obs.error is not None and obs.facts.get("connected") is not False
    if errored or not all(o.ok for o in outcomes if o.severity == "critical"):
        return "failing", outcomes
    if not all(o.ok for o in outcomes):
        return "degraded", outcomes
    return "ok", outcomes
