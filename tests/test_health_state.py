"""The alert state machine, conditions and maintenance windows as pure functions: examples
and properties over arbitrary result sequences (hypothesis)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.health.conditions import ConditionError, Missing, parse
from tasks.health.state import Memory, Policy, Step, advance
from tasks.health.windows import CronWindow, FixedWindow, active_window

T0 = dt.datetime(2030, 1, 1, 3, 0, tzinfo=dt.UTC)


def play(
    healths: list[str],
    policy: Policy,
    suppressed: list[Any] | None = None,
    every_s: float = 60,
) -> list[Step]:
    memory, steps = Memory(), []
    for i, health in enumerate(healths):
        now = T0 + dt.timedelta(seconds=every_s * i)
        step = advance(memory, health, policy, now, (suppressed or [None] * len(healths))[i])  # type: ignore[arg-type]
        steps.append(step)
        memory = step.memory
    return steps


def test_failing_after_threshold_and_back_after_successes() -> None:
    steps = play(["failing", "failing", "failing", "ok", "failing", "ok", "ok"], Policy(3, 2))
    assert [s.memory.state for s in steps] == [
        "OK",
        "OK",
        "FAILING",
        "FAILING",
        "FAILING",
        "FAILING",
        "OK",
    ]
    assert [s.notice for s in steps] == [None, None, "failing", None, None, None, "resolved"]
    assert [s.remediate for s in steps].count(True) == 1


def test_degraded_and_partial_recovery() -> None:
    steps = play(
        ["degraded", "degraded", "failing", "failing", "degraded", "degraded", "ok", "ok"],
        Policy(2, 2),
    )
    assert [s.memory.state for s in steps] == [
        "OK",
        "DEGRADED",
        "DEGRADED",
        "FAILING",
        "FAILING",
        "DEGRADED",
        "DEGRADED",
        "OK",
    ]
    assert [s.notice for s in steps] == [
        None,
        "degraded",
        None,
        "failing",
        None,
        "degraded",
        None,
        "resolved",
    ]


def test_reminders_follow_the_interval() -> None:
    steps = play(["failing"] * 6, Policy(1, 1, remind_every_s=150), every_s=60)
    assert [s.notice for s in steps] == ["failing", None, None, "reminder", None, None]


def test_suppressed_notice_is_sent_when_suppression_ends_and_never_twice() -> None:
    steps = play(
        ["failing"] * 4 + ["ok"],
        Policy(1, 1),
        suppressed=["maintenance", "maintenance", None, None, None],
    )
    assert [s.notice for s in steps] == [None, None, "failing", None, "resolved"]


def test_no_resolved_notice_for_an_episode_nobody_was_told_about() -> None:
    steps = play(["failing", "ok"], Policy(1, 1), suppressed=["maintenance", None])
    assert [s.notice for s in steps] == [None, None]


def test_dependency_suppression_still_lets_the_resolved_notice_through() -> None:
    steps = play(["failing", "ok"], Policy(1, 1), suppressed=[None, "dependency"])
    assert [s.notice for s in steps] == ["failing", "resolved"]


@settings(max_examples=300, deadline=None)
@given(
    healths=st.lists(st.sampled_from(["ok", "degraded", "failing"]), max_size=40),
    failure=st.integers(1, 4),
    success=st.integers(1, 4),
    windows=st.lists(
        st.sampled_from([None, None, "maintenance", "dependency"]), min_size=40, max_size=40
    ),
)
def test_properties_of_any_sequence(
    healths: list[str], failure: int, success: int, windows: list[Any]
) -> None:
    steps = play(healths, Policy(failure, success), suppressed=windows[: len(healths)])
    told = False  # has a notice about the current bad episode gone out?
    for i, step in enumerate(steps):
        state, previous = step.memory.state, step.previous
        if state == "FAILING" and previous != "FAILING":
            assert healths[i - failure + 1 : i + 1] == ["failing"] * failure
        if state == "OK" and previous != "OK":
            assert healths[i - success + 1 : i + 1] == ["ok"] * success
        if windows[i] == "maintenance":
            assert step.notice is None  # nothing is sent inside a maintenance window
        if step.notice in ("failing", "degraded"):
            assert state != "OK"
            told = True
        if step.notice == "resolved":
            assert told
            assert state == "OK"
            assert previous != "OK"
        if state == "OK":
            told = False
        if step.notice == "failing":  # one per episode, with its remediation
            assert step.remediate
        assert step.notice != "reminder"  # no interval configured


@settings(max_examples=200, deadline=None)
@given(healths=st.lists(st.sampled_from(["ok", "failing"]), max_size=40), failure=st.integers(1, 4))
def test_exactly_one_notice_per_transition_without_suppression(
    healths: list[str], failure: int
) -> None:
    steps = play(healths, Policy(failure, 1))
    transitions = [s for s in steps if s.changed]
    notices = [s for s in steps if s.notice]
    assert notices == transitions


# --- conditions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "facts", "ok", "actual"),
    [
        ("status == 200", {"status": 200}, True, 200),
        ("status==200", {"status": 201}, False, 201),
        ("response_time_ms < 500", {"response_time_ms": 499.9}, True, 499.9),
        ('body.status == "UP"', {"body": '{"status": "UP"}'}, True, "UP"),
        (
            'body.data[1].name != "b"',
            {"body": '{"data": [{"name": "a"}, {"name": "b"}]}'},
            False,
            "b",
        ),
        ("len(body.data) > 1", {"body": '{"data": [1, 2]}'}, True, 2),
        ('body contains "ok"', {"body": "all ok"}, True, "all ok"),
        ('body not contains "error"', {"body": "error: x"}, False, "error: x"),
        ('body matches "^v[0-9]+"', {"body": "v12"}, True, "v12"),
        ("status in [200, 204]", {"status": 204}, True, 204),
        ("body.count == null", {"body": '{"count": null}'}, True, None),
        ("status == 200", {}, False, Missing("no value")),
        ('body.status == "UP"', {"body": "<html>"}, False, Missing("body is not JSON")),
    ],
)
def test_conditions_evaluate(text: str, facts: dict[str, Any], ok: bool, actual: Any) -> None:
    assert parse(text, "http").evaluate(facts) == (ok, actual)


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("status = 200", "http", "cannot read condition"),
        ("status == UP", "http", "cannot read the value 'UP'"),
        ('status == "200"', "http", 'status is a number; "200" is not'),
        ("connected == 1", "tcp", "connected is a bool; 1 is not"),
        ('used_percent contains "x"', "disk", "needs a string or a list"),
        ("status.code == 1", "http", "'status' is a number; it has no fields"),
        ("headers == 1", "http", "'headers' needs one name"),
        ("status in 200", "http", "'in' needs a list"),
        ("row_cout > 1", "postgres", "did you mean 'row_count'?"),
    ],
)
def test_bad_conditions_are_explained(text: str, kind: str, message: str) -> None:
    with pytest.raises(ConditionError, match=None) as err:
        parse(text, kind)
    assert message in str(err.value)


# --- maintenance windows ------------------------------------------------------------------


def test_cron_window_in_its_timezone() -> None:
    nightly = CronWindow(cron="0 2 * * *", duration_s=3600, timezone="Europe/Berlin")
    berlin_0230 = dt.datetime(2030, 1, 1, 1, 30, tzinfo=dt.UTC)  # 02:30 in Berlin (UTC+1)
    assert nightly.active_until(berlin_0230) == dt.datetime(2030, 1, 1, 2, 0, tzinfo=dt.UTC)
    assert nightly.active_until(berlin_0230 + dt.timedelta(minutes=31)) is None
    assert nightly.active_until(berlin_0230 - dt.timedelta(minutes=31)) is None


def test_fixed_window_and_description() -> None:
    window = FixedWindow.model_validate(
        {"start": "2030-01-01T03:00:00", "end": "2030-01-01T04:00:00", "description": "DB upgrade"}
    )
    assert (
        active_window([window], T0) == "maintenance window (DB upgrade) until 2030-01-01 04:00 UTC"
    )
    assert active_window([window], T0 + dt.timedelta(hours=1)) is None
