"""The Prefect UI in a real headless Chromium: a runbook's typed run form, filled and submitted.

Uses Debian's chromium (browser downloads are not possible here) through Playwright's Python
client. Screenshots of the form and of the finished run are saved under test-output/.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Home, unavailable
from tests.helpers import REPO
from tests.serve_helpers import Served, api, deployment, wait_final, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = REPO / "test-output"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
RUNBOOK = """
name: restart
description: Restart a service.
parameters:
  service: {type: string, enum: [api, worker], description: Which service}
  batch: {type: integer, default: 2, minimum: 1, maximum: 5, description: Hosts at a time}
steps:
  - id: go
    uses: log
    with: {message: "restart {{ params.service }} x{{ params.batch }}"}
"""


@pytest.fixture
def browser() -> Any:
    if not Path(CHROMIUM).exists():
        unavailable("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_typed_form_starts_a_run_that_completes_with_its_summary(
    home: Home, prefect_api: str, browser: Any
) -> None:
    OUTPUT.mkdir(exist_ok=True)
    home.runbook("restart", RUNBOOK)
    served = Served(home.env)
    try:
        served.wait_for("serving ", timeout=90)
        ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
        dep = deployment("restart")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{ui}/deployments", wait_until="networkidle")
        page.get_by_role("link", name="restart").first.click()
        page.wait_for_url(f"**/deployments/deployment/{dep.id}**")
        page.goto(f"{ui}/deployments/deployment/{dep.id}/run", wait_until="networkidle")

        service = page.locator(".schema-form-property").filter(has_text="Which service")
        assert service.count() == 1, (
            "the form shows the runbook's own parameter and its description"
        )
        service.locator(".p-select-button__control").click()
        page.keyboard.press("ArrowDown")
        page.get_by_role("option", name="worker").wait_for(timeout=10_000)
        options = [o.inner_text() for o in page.get_by_role("option").all()]
        assert options == ["api", "worker"]
        page.get_by_role("option", name="worker").click()
        batch = page.locator(".schema-form-property").filter(has_text="Hosts at a time")
        assert batch.locator("input").input_value() == "2"
        batch.locator("input").fill("3")
        page.screenshot(path=str(OUTPUT / "ui-run-form.png"), full_page=True)

        def runs_of_deployment() -> list[Any]:
            # The deployment (runbook/restart) may have runs of earlier tests on this server.
            from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

            return list(
                api(
                    lambda c: c.read_flow_runs(
                        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id]))
                    )
                )
            )

        earlier = {r.id for r in runs_of_deployment()}
        page.get_by_role("button", name="Submit").click()
        page.get_by_text("scheduled to start now").first.wait_for(timeout=30_000)

        def new_run() -> Any:
            return next((r for r in runs_of_deployment() if r.id not in earlier), None)

        run = wait_until(new_run, 30, "the flow run created from the form")
        assert run.parameters == {"service": "worker", "batch": 3}
        final = wait_final(run.id, 90)
        assert final.state.is_completed(), final.state

        page.goto(f"{ui}/runs/flow-run/{run.id}", wait_until="networkidle")
        page.get_by_text("Completed").first.wait_for(timeout=30_000)
        page.get_by_text("Artifacts", exact=True).first.click()
        page.get_by_text("runbook-restart").first.wait_for(timeout=30_000)
        page.screenshot(path=str(OUTPUT / "ui-finished-run.png"), full_page=True)
        from ktlo.store.runs import get_run, steps_of

        assert get_run(str(run.id)).trigger == "deployment"
        assert steps_of(str(run.id))[0].output == {"message": "restart worker x3"}
    finally:
        served.stop()
