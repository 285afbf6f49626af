"""The alert state machine of one check, as a pure function of what it remembers and one result.

States: OK, DEGRADED (critical conditions pass, warnings fail), FAILING. A check goes
FAILING after `failure_threshold` failed results in a row, DEGRADED after that many results
in a row that were not fully OK, and back after `success_threshold` results in a row.

Notifications follow transitions, exactly one per transition: the FAILING (or DEGRADED)
notice is sent when the check enters the state, unless it is suppressed (a maintenance
window, or a check it depends on is FAILING); a suppressed notice is sent later if the
check is still not OK once the suppression ends, so nothing is silently lost. A resolved
notice is sent only if a notice about the episode went out. Reminders repeat every
`remind_every_s` while FAILING. Remediation starts with the (possibly deferred) FAILING notice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

State = Literal["OK", "DEGRADED", "FAILING"]
Health = Literal["ok", "degraded", "failing"]  # one probe's verdict
Notice = Literal["failing", "degraded", "resolved", "reminder"]
Suppression = Literal["maintenance", "dependency"]


@dataclass(frozen=True)
class Memory:
    """What the store keeps about a check between sweeps."""

    state: State = "OK"
    since: datetime | None = None  # when the current state was entered
    streak_since: datetime | None = None  # first result of the current run of bad results
    fail_streak: int = 0  # failed results in a row
    bad_streak: int = 0  # failed or degraded results in a row
    ok_streak: int = 0  # fully OK results in a row
    good_streak: int = 0  # OK or degraded results in a row
    alerted: bool = False  # a notice about the current non-OK state went out
    last_notified_at: datetime | None = None


@dataclass(frozen=True)
class Policy:
    failure_threshold: int = 3
    success_threshold: int = 2
    remind_every_s: float | None = None
    send_on_resolved: bool = True


@dataclass(frozen=True)
class Step:
    memory: Memory
    previous: State
    previous_since: datetime | None  # when the previous state was entered
    notice: Notice | None  # what to send now (None: nothing)
    remediate: bool  # start the remediation runbook now

    @property
    def changed(self) -> bool:
        return self.memory.state != self.previous


def count(memory: Memory, health: Health, now: datetime) -> Memory:
    """Update the streaks with one result."""
    failed, ok = health == "failing", health == "ok"
    bad_before = memory.bad_streak
    return replace(
        memory,
        fail_streak=memory.fail_streak + 1 if failed else 0,
        bad_streak=0 if ok else memory.bad_streak + 1,
        ok_streak=memory.ok_streak + 1 if ok else 0,
        good_streak=0 if failed else memory.good_streak + 1,
        streak_since=None if ok else (now if bad_before == 0 else memory.streak_since),
    )


def next_state(memory: Memory, policy: Policy) -> State:
    """The state after the streaks were updated."""
    if memory.state != "FAILING" and memory.fail_streak >= policy.failure_threshold:
        return "FAILING"
    if memory.state == "OK" and memory.bad_streak >= policy.failure_threshold:
        return "DEGRADED"
    if memory.state != "OK" and memory.ok_streak >= policy.success_threshold:
        return "OK"
    if memory.state == "FAILING" and memory.good_streak >= policy.success_threshold:
        return "DEGRADED"
    return memory.state


def advance(
    memory: Memory,
    health: Health,
    policy: Policy,
    now: datetime,
    suppressed: Suppression | None = None,
) -> Step:
    """One result: new memory, and what to send (if anything) and whether to remediate.

    A resolved notice is held back only by a maintenance window: whoever was told that a
    dependant failed wants to hear it recovered, whatever its dependencies do.
    """
    previous, previous_since = memory.state, memory.since
    memory = count(memory, health, now)
    state = next_state(memory, policy)
    if memory.since is None:
        memory = replace(memory, since=now)
    notice: Notice | None = None
    if state != previous:
        was_alerted = memory.alerted
        memory = replace(memory, state=state, since=now, alerted=False)
        if state == "OK":
            if was_alerted and policy.send_on_resolved and suppressed != "maintenance":
                notice = "resolved"
        elif not suppressed:
            notice = "failing" if state == "FAILING" else "degraded"
    elif state != "OK" and not suppressed:
        if not memory.alerted:
            notice = "failing" if state == "FAILING" else "degraded"  # deferred
        elif state == "FAILING" and _reminder_due(memory, policy, now):
            notice = "reminder"
    if notice is not None:
        memory = replace(memory, last_notified_at=now, alerted=notice != "resolved")
    return Step(memory, previous, previous_since, notice, remediate=notice == "failing")


def _reminder_due(memory: Memory, policy: Policy, now: datetime) -> bool:
    if policy.remind_every_s is None or memory.last_notified_at is None:
        return False
    return (now - memory.last_notified_at).total_seconds() >= policy.remind_every_s
