"""`ktlo serve` serves each DR plan's drill deployment (`dr-drill/dr-drill-<plan>`) beside the
runbooks, against a real Prefect server: it runs from the API and goes away with its plan."""

from __future__ import annotations

import signal
from typing import Any

from tests.conftest import Home
from tests.serve_helpers import Served, api, wait_final, wait_until

PLAN = """
name: tiny
schedule: {cron: "0 4 * * 6", timezone: UTC}
services:
  - name: hello
    rto_s: 600
    rpo_s: 86400
    recover: {runbook: tiny-recover, params: {dir: "{{ scratch.dir }}"}}
    verify:
      - {name: tiny-hello, type: command, command: [test, -s, "{{ scratch.dir }}/hello"]}
"""

RECOVER = """
name: tiny-recover
parameters:
  dir: {type: string}
steps:
  - id: write
    uses: shell
    with: {command: [sh, -c, 'echo hi > "$0/hello"', "{{ params.dir }}"]}
"""

NAME = "dr-drill/dr-drill-tiny"


def _deployment() -> Any:
    from prefect.exceptions import ObjectNotFound

    async def read(client: Any) -> Any:
        try:
            return await client.read_deployment_by_name(NAME)
        except ObjectNotFound:
            return None

    return api(read)


def test_serve_serves_each_plans_drill_and_deletes_it_with_the_plan(
    home: Home, prefect_api: str
) -> None:
    plans = home.runbooks.parent / "plans"
    plans.mkdir()
    (plans / "tiny.yaml").write_text(PLAN)
    (home.runbooks / "tiny-recover.yaml").write_text(RECOVER)
    served = Served(home.env)
    try:
        served.wait_for(f"serving {NAME}", timeout=120)
        dep = wait_until(_deployment, 30, "the drill deployment")
        assert dep.parameters == {"plan": "tiny"}
        assert [s.schedule.cron for s in dep.schedules] == ["0 4 * * 6"]

        async def start(client: Any) -> Any:
            return (await client.create_flow_run_from_deployment(dep.id)).id

        run = wait_final(api(start), timeout=180)
        assert run.state.is_completed(), run.state

        from tasks.dr import store

        drill = store.last_drills(["tiny"])["tiny"]
        assert drill.run_id == str(run.id)
        assert drill.verdict == "passed", drill.report.get("notes")

        (plans / "tiny.yaml").unlink()  # the plans directory is watched like the runbooks
        wait_until(lambda: _deployment() is None, 60, "the drill deployment to be deleted")
        (plans / "tiny.yaml").write_text(PLAN)  # and a plan added while serving is served
        wait_until(_deployment, 60, "the drill deployment to come back")
    finally:
        if served.stop(signal.SIGTERM) != 0:
            served.stop(signal.SIGKILL)
