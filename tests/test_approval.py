"""The approval step: pause, decide from the CLI (or the UI), audit who decided; timeout rejects."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import Home
from tests.helpers import KTLO, cli

RUNBOOK = """
name: gated
steps:
  - id: before
    uses: log
    with: {{message: before}}
  - id: approve
    uses: approval
    with: {{message: "Really restart the database?", timeout_s: {timeout}, approvers: [alice, bob]}}
  - id: after
    uses: log
    with: {{message: "approved by {{{{ steps.approve.output.decided_by }}}}"}}
"""


def _start(home: Home, timeout: int = 120) -> subprocess.Popen[str]:
    home.runbook("gated", RUNBOOK.format(timeout=timeout))
    env = {**os.environ, **home.env}
    return subprocess.Popen(
        [KTLO, "run", "gated", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_pending(deadline_s: float = 60) -> Any:
    from ktlo.engine import approvals

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        waiting = approvals.pending()
        if waiting:
            return waiting[0]
        time.sleep(0.3)
    raise AssertionError("no approval became pending")


def _audit_actions() -> list[tuple[str, str]]:
    from ktlo.store.audit import events

    return [(e.action, e.actor) for e in reversed(events(limit=500))]


def test_approve_from_the_cli(home: Home, prefect_api: str) -> None:
    proc = _start(home)
    pending = _wait_pending()
    assert pending.message == "Really restart the database?"
    refused = cli("approve", pending.flow_run_id, "--as", "mallory", env=home.env)
    assert refused.returncode == 1
    assert "mallory may not decide" in refused.stderr
    ok = cli(
        "approve", pending.flow_run_id[-12:], "--as", "alice", "-m", "change CHG-42", env=home.env
    )
    assert ok.returncode == 0, ok.stderr
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["status"] == "succeeded"
    after = next(s for s in result["steps"] if s["id"] == "after")
    assert after["output"] == {"message": "approved by alice"}
    actions = _audit_actions()
    assert (
        "approval.requested",
        actions[[a for a, _ in actions].index("approval.requested")][1],
    ) in actions
    assert ("approval.approved", "alice") in actions
    from ktlo.store.audit import events

    decided = next(e for e in events(limit=500) if e.action == "approval.approved")
    assert decided.details["comment"] == "change CHG-42"
    assert decided.details["decided_at"]


def test_reject_stops_the_run(home: Home, prefect_api: str) -> None:
    proc = _start(home)
    pending = _wait_pending()
    rejected = cli(
        "approve",
        pending.flow_run_id,
        "--reject",
        "--as",
        "bob",
        "-m",
        "not during peak",
        env=home.env,
    )
    assert rejected.returncode == 0, rejected.stderr
    out, _err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    result = json.loads(out)
    steps = {s["id"]: s for s in result["steps"]}
    assert steps["approve"]["error"] == "rejected by bob: not during peak"
    assert steps["after"]["status"] == "not_run"
    assert ("approval.rejected", "bob") in _audit_actions()


@pytest.mark.timeout(180)
def test_timeout_counts_as_rejected(home: Home, prefect_api: str) -> None:
    proc = _start(home, timeout=3)
    out, _err = proc.communicate(timeout=150)
    assert proc.returncode == 1
    steps = {s["id"]: s for s in json.loads(out)["steps"]}
    assert "timed out after 3s (counts as rejected)" in steps["approve"]["error"]
    assert "approval.timed_out" in [a for a, _ in _audit_actions()]


def test_approve_without_a_pending_approval(home: Home) -> None:
    result = cli("approve", "0000", env=home.env)
    assert result.returncode == 1
    assert "no approval is pending for run 0000" in result.stderr
