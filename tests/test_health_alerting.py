"""Alert state across sweeps, end to end: each sweep is a real flow run of a runbook on the
session's Prefect server, targets are real loopback servers, and notifications are real
apprise `json://` deliveries to a loopback receiver."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

from sqlmodel import select

from ktlo.store import audit
from ktlo.store.db import session
from tasks.health.store import CheckEvent, CheckState, current_states
from tests.conftest import Home
from tests.health_helpers import (
    free_port,
    messages,
    service,
    store,
    sweep_runbook,
    titles,
)

__all__ = ["store"]  # a fixture
from tests.helpers import Receiver, cli


def target(receiver: Receiver) -> list[str]:
    return [f"json://127.0.0.1:{receiver.port}/hook"]


def sweep(run: Any, path: Any) -> dict[str, dict[str, Any]]:
    """Run the runbook once; the sweep's results by check name."""
    result = run(path)
    step = result.steps["sweep"]
    assert step.status == "succeeded", step.error
    return {c["name"]: c for c in step.output["checks"]}


def test_down_and_back_sends_one_failing_and_one_resolved_notice(
    home: Home, run: Any, receiver: Receiver
) -> None:
    with service() as svc:
        path = sweep_runbook(
            home,
            [
                {
                    "name": "orders-api",
                    "type": "http",
                    "url": f"{svc.url}/health",
                    "conditions": ["status == 200", 'body.status == "UP"'],
                    "failure_threshold": 2,
                    "success_threshold": 2,
                    "alert": target(receiver),
                }
            ],
        )
        states = [sweep(run, path)["orders-api"]["state"]]
        svc.stop()
        first_down = sweep(run, path)["orders-api"]
        states.append(first_down["state"])
        states += [sweep(run, path)["orders-api"]["state"] for _ in range(2)]
        svc.start()
        states += [sweep(run, path)["orders-api"]["state"] for _ in range(2)]

    assert states == ["OK", "OK", "FAILING", "FAILING", "FAILING", "OK"]
    assert first_down["ok"] is False
    assert first_down["error"] == "connection refused"
    got = titles(receiver)
    assert len(got) == 2, got
    assert got[0].startswith("🔴 FAILING: orders-api: status == 200 (actual <no value>)")
    assert got[1].startswith("✅ RESOLVED: orders-api was FAILING for")

    body = messages(receiver)[0]["message"]
    assert f"orders-api (http GET {svc.url}/health)" in body
    assert "Failing since: " in body
    assert "(2 bad result(s) in a row; threshold 2)" in body
    assert "Error: connection refused" in body
    assert "Flow run: http://127.0.0.1:" in body
    assert "/runs/flow-run/" in body

    actions = [e.action for e in reversed(audit.events(action_prefix="check."))]
    assert actions == ["check.failing", "check.recovered"]
    event = audit.events(action_prefix="check.failing")[0]
    assert event.subject == "hc/sweep/orders-api"
    assert event.details["to"] == "FAILING"
    assert audit.verify().ok


def test_notice_shows_failing_conditions_with_actual_values(
    home: Home, run: Any, receiver: Receiver
) -> None:
    with service() as svc:
        path = sweep_runbook(
            home,
            [
                {
                    "name": "payments",
                    "type": "http",
                    "url": f"{svc.url}/status/503",
                    "conditions": [
                        "status == 200",
                        'body.status == "UP"',
                        "response_time_ms < 5000",
                    ],
                    "failure_threshold": 1,
                    "alert": target(receiver),
                }
            ],
        )
        result = sweep(run, path)["payments"]
    assert result["state"] == "FAILING"
    actual = {c["condition"]: (c["ok"], c["actual"]) for c in result["conditions"]}
    assert actual["status == 200"] == (False, "503")
    assert actual['body.status == "UP"'] == (False, '"DOWN"')
    assert actual["response_time_ms < 5000"][0] is True
    (notice,) = messages(receiver)
    assert notice["title"] == "🔴 FAILING: payments: status == 200 (actual 503)"
    assert "✗ status == 200  (actual: 503)" in notice["message"]
    assert '✗ body.status == "UP"  (actual: "DOWN")' in notice["message"]
    assert "response_time_ms" not in notice["message"]  # only what fails
    assert "State: FAILING since 20" in notice["message"]


def test_reminders_repeat_at_the_interval_while_failing(
    home: Home, run: Any, receiver: Receiver
) -> None:
    closed = free_port()
    checks = [
        {
            "name": name,
            "type": "tcp",
            "host": "127.0.0.1",
            "port": closed,
            "failure_threshold": 1,
            "remind_every_s": every,
            "alert": target(receiver),
        }
        for name, every in (("often", 1), ("hourly", 3600))
    ]
    path = sweep_runbook(home, checks)
    notices = []
    for _ in range(3):
        results = sweep(run, path)
        notices.append((results["often"]["notice"], results["hourly"]["notice"]))
        time.sleep(1.1)  # past `often`'s interval, far from `hourly`'s
    assert notices == [("failing", "failing"), ("reminder", None), ("reminder", None)]
    got = titles(receiver)
    assert sum(t.startswith("🔴 FAILING: often") for t in got) == 1
    assert sum(t.startswith("🔁 STILL FAILING: often") for t in got) == 2
    assert [t for t in got if "hourly" in t] == [
        t for t in got if t.startswith("🔴 FAILING: hourly")
    ]
    assert len([t for t in got if "hourly" in t]) == 1


def test_nothing_is_sent_inside_a_maintenance_window(
    home: Home, run: Any, receiver: Receiver
) -> None:
    now = dt.datetime.now(dt.UTC)
    fixed = {
        "start": (now - dt.timedelta(hours=1)).isoformat(),
        "end": (now + dt.timedelta(hours=1)).isoformat(),
    }
    every_minute = {"cron": "* * * * *", "duration_s": 3600, "timezone": "Europe/Berlin"}
    closed = free_port()

    def checks(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "type": "tcp",
                "host": "127.0.0.1",
                "port": closed,
                "failure_threshold": 1,
                "alert": target(receiver),
                "maintenance": [window] if windows else [],
            }
            for name, window in (("fixed", fixed), ("recurring", every_minute))
        ]

    path = sweep_runbook(home, checks([fixed]))
    for _ in range(2):
        results = sweep(run, path)
        for name in ("fixed", "recurring"):
            assert results[name]["state"] == "FAILING"  # recorded all the same
            assert results[name]["notice"] is None
            assert results[name]["suppressed"].startswith("maintenance window (")
    assert receiver.json_urls() == []
    assert {s.name: s.state for s in current_states("hc")} == {
        "fixed": "FAILING",
        "recurring": "FAILING",
    }

    # The window is over (removed) and the check still fails: the held-back notice goes out once.
    path = sweep_runbook(home, checks([]))
    results = sweep(run, path)
    assert results["fixed"]["notice"] == "failing"
    assert results["fixed"]["suppressed"] is None
    sweep(run, path)
    assert sorted(titles(receiver)) == [
        "🔴 FAILING: fixed: connected == true (actual false)",
        "🔴 FAILING: recurring: connected == true (actual false)",
    ]


def test_a_dependant_of_a_failing_check_is_suppressed(
    home: Home, run: Any, receiver: Receiver
) -> None:
    with service() as db, service() as api:
        db.stop()
        api.stop()
        path = sweep_runbook(
            home,
            [
                {
                    "name": "api",
                    "type": "http",
                    "url": f"{api.url}/health",
                    "depends_on": ["db"],
                    "failure_threshold": 1,
                    "success_threshold": 1,
                    "alert": target(receiver),
                },
                {
                    "name": "db",
                    "type": "tcp",
                    "host": "127.0.0.1",
                    "port": db.port,
                    "failure_threshold": 1,
                    "success_threshold": 1,
                    "alert": target(receiver),
                },
            ],
        )
        results = sweep(run, path)
        assert results["db"]["state"] == results["api"]["state"] == "FAILING"
        assert results["api"]["suppressed"] == "depends on 'db', which is FAILING"
        assert results["api"]["notice"] is None
        assert titles(receiver) == ["🔴 FAILING: db: connected == true (actual false)"]

        db.start()  # the dependency recovers, the dependant does not: now it is news
        results = sweep(run, path)
        assert results["db"]["state"] == "OK"
        assert results["api"]["suppressed"] is None
    got = titles(receiver)
    assert len(got) == 3
    later = sorted(got[1:])  # sent concurrently by the same sweep
    assert later[0].startswith("✅ RESOLVED: db")
    assert later[1].startswith("🔴 FAILING: api: status >= 200 (actual <no value>)")


def test_same_check_name_in_two_runbooks_keeps_separate_state(home: Home, run: Any) -> None:
    with service() as svc:
        up = sweep_runbook(
            home, [{"name": "api", "type": "http", "url": f"{svc.url}/health"}], name="hc-up"
        )
        down = sweep_runbook(
            home,
            [
                {
                    "name": "api",
                    "type": "http",
                    "url": f"{svc.url}/status/500",
                    "failure_threshold": 1,
                }
            ],
            name="hc-down",
        )
        assert sweep(run, up)["api"]["state"] == "OK"
        assert sweep(run, down)["api"]["state"] == "FAILING"
        assert sweep(run, up)["api"]["state"] == "OK"
    assert {s.key: s.state for s in current_states()} == {
        "hc-down/sweep/api": "FAILING",
        "hc-up/sweep/api": "OK",
    }


def test_degraded_when_only_warnings_fail(home: Home, run: Any, receiver: Receiver) -> None:
    with service() as svc:
        path = sweep_runbook(
            home,
            [
                {
                    "name": "api",
                    "type": "http",
                    "url": f"{svc.url}/health",
                    "conditions": ["status == 200"],
                    "warn": ['headers.x-service == "billing"'],
                    "failure_threshold": 1,
                    "alert": target(receiver),
                }
            ],
        )
        result = sweep(run, path)["api"]
    assert (result["ok"], result["health"], result["state"]) == (True, "degraded", "DEGRADED")
    warning = next(c for c in result["conditions"] if c["severity"] == "warning")
    assert warning == {
        "condition": 'headers.x-service == "billing"',
        "ok": False,
        "actual": '"orders"',
        "severity": "warning",
    }
    assert titles(receiver) == [
        '🟡 DEGRADED: api: headers.x-service == "billing" (actual "orders")'
    ]


def test_concurrent_sweeps_notify_a_transition_once(
    home: Home, store: str, prefect_api: str, receiver: Receiver
) -> None:
    """Four flow runs of one sweep at once, on SQLite and on PostgreSQL."""
    from flows.runbook import runbook_flow

    path = sweep_runbook(
        home,
        [
            {
                "name": f"port-{i}",
                "type": "tcp",
                "host": "127.0.0.1",
                "port": free_port(),
                "failure_threshold": 1,
                "alert": target(receiver),
            }
            for i in range(3)
        ],
    )

    async def both() -> list[Any]:
        return await asyncio.gather(
            *(runbook_flow(runbook=str(path), return_state=True) for _ in range(4))
        )

    states = asyncio.run(both())
    assert all(s.is_completed() for s in states)
    got = sorted(titles(receiver))
    assert got == [f"🔴 FAILING: port-{i}: connected == true (actual false)" for i in range(3)]
    with session() as s:
        failing_events = s.exec(select(CheckEvent).where(CheckEvent.to_state == "FAILING")).all()
        rows = s.exec(select(CheckState)).all()
    assert len([e for e in failing_events if e.from_state == "OK"]) == 3
    assert {r.fail_streak for r in rows} == {4}  # every sweep counted, none lost


def test_status_command_prints_every_check(home: Home, run: Any) -> None:
    with service() as svc:
        path = sweep_runbook(
            home,
            [
                {"name": "api", "type": "http", "url": f"{svc.url}/health"},
                {
                    "name": "broken",
                    "type": "http",
                    "url": f"{svc.url}/status/500",
                    "failure_threshold": 1,
                },
            ],
        )
        sweep(run, path)
    out = cli("status", "--json", env=home.env)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    by_name = {c["name"]: c for c in data["checks"]}
    assert by_name["api"]["state"] == "OK"
    assert by_name["broken"]["state"] == "FAILING"
    assert by_name["broken"]["runbook"] == "hc"
    assert by_name["broken"]["failing"] == ["status < 300 (actual 500)"]
    assert by_name["broken"]["target"] == f"GET {svc.url}/status/500"
    table = cli("status", env=home.env)
    assert table.returncode == 0, table.stderr
    for text in ("broken", "FAILING", "api", "status < 300 (actual 500)"):
        assert text in table.stdout
