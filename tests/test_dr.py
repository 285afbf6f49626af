"""DR drills and readiness against real PostgreSQL, real backups in the catalog, real child
flow runs on the session's Prefect server, and a real loopback HTTP app."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from tests.dr_helpers import Example, database_exists, drill, example  # noqa: F401
from tests.helpers import KTLO, REPO, cli, start_receiver


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _assert_scratch_gone(doc: dict) -> None:
    for svc in doc["services"]:
        proof = svc["cleanup"]
        assert svc["cleaned_up"], svc
        for name in proof["databases_dropped"]:
            assert not database_exists(name)
        for folder in proof["directories_removed"]:
            assert not Path(folder).exists()
        for pid in proof["processes_stopped"]:
            assert not _pid_alive(pid)


def test_example_drill_recovers_in_order_measures_and_cleans_up(
    example: Example,  # noqa: F811
    tmp_path: Path,
) -> None:
    from tasks.backup import store as catalog

    result = cli("dr", "drill", "example", "--json", env=example.home.env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "passed", doc["notes"]
    assert set(doc) >= {"plan", "plan_hash", "verdict", "services", "run_id"}
    by = {s["name"]: s for s in doc["services"]}
    assert [(s["name"], s["wave"]) for s in doc["services"]] == [
        ("db", 0),
        ("uploads", 0),
        ("app", 1),
    ]
    # the app starts only after both of its dependencies were verified
    assert by["app"]["started_s"] >= max(by["db"]["verified_s"], by["uploads"]["verified_s"])
    started = datetime.fromisoformat(doc["started_at"].replace("Z", "+00:00"))
    for name, source in (("db", "dr-example-db"), ("uploads", "dr-example-uploads")):
        backup = catalog.latest(source, verified=True)
        assert backup is not None
        age = (started - catalog.aware(backup.created_at)).total_seconds()  # type: ignore[operator]
        assert abs(by[name]["rpo_achieved_s"] - age) < 1.0
        assert by[name]["data_checks"]
        assert all(c["ok"] for c in by[name]["data_checks"])
        assert by[name]["recovery_points"][0]["id"] == backup.id
    for s in doc["services"]:
        assert s["verified"]
        assert s["rto_achieved_s"] <= s["rto_target_s"]
        assert s["recover_run_id"]
        assert s["service_run_id"]
    _assert_child_runs(doc)
    assert by["app"]["cleanup"]["processes_stopped"], "the app's process was stopped"
    assert by["db"]["cleanup"]["databases_dropped"]
    _assert_scratch_gone(doc)

    ready = cli("dr", "readiness", "example", "--json", env=example.home.env)
    assert ready.returncode == 0, ready.stdout
    assert json.loads(ready.stdout)["plans"][0]["ready"] is True

    stored = cli("dr", "report", doc["run_id"][:8], "--format", "json", env=example.home.env)
    assert json.loads(stored.stdout)["services"] == doc["services"]
    md = cli("dr", "report", doc["run_id"], "--format", "md", env=example.home.env)
    assert "**passed**" in md.stdout
    assert "| app | 1 |" in md.stdout
    html = tmp_path / "report.html"
    out = cli(
        "dr", "report", doc["run_id"], "--format", "html", "-o", str(html), env=example.home.env
    )
    assert out.returncode == 0, out.stderr
    _check_html_in_chromium(html, doc, tmp_path)


def _check_html_in_chromium(html: Path, doc: dict, tmp_path: Path) -> None:
    from tasks.dr.report import HEADERS, table_rows
    from tests.conftest import unavailable
    from tests.test_ui_browser import ARGS, CHROMIUM

    if not Path(CHROMIUM).exists():
        unavailable("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(html.as_uri())
            assert page.locator("#verdict").inner_text() == "passed"
            bars = page.locator("#timeline rect.bar")
            assert bars.count() == 2 * len(doc["services"])  # recover and verify per service
            assert page.locator("#timeline line.rto-target").count() == len(doc["services"])
            box = page.locator("#timeline").bounding_box()
            assert box is not None
            assert box["width"] > 400
            assert box["height"] > 100
            headers = page.locator("#objectives thead th").all_inner_texts()
            assert headers == HEADERS
            cells = [
                row.locator("td").all_inner_texts()
                for row in page.locator("#objectives tbody tr").all()
            ]
            assert cells == table_rows(doc)
            assert cells[2][0] == "app"
            assert float(cells[2][3]) == round(doc["services"][2]["rto_achieved_s"], 1)
            shot = tmp_path / "dr-report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def _assert_child_runs(doc: dict[str, Any]) -> None:
    """Each service is a child run of the drill in Prefect, named after plan and service."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for s in doc["services"]:
            run = client.read_flow_run(UUID(s["service_run_id"]))
            assert run.name == f"{doc['plan']}-{s['name']}"
            assert run.parent_task_run_id is not None
            parent = client.read_task_run(run.parent_task_run_id)
            assert str(parent.flow_run_id) == doc["run_id"]


def test_failing_verify_fails_the_drill_cleans_up_and_says_why(example: Example) -> None:  # noqa: F811
    example.edit_plan('conditions: ["status == 200"]', 'conditions: ["status == 418"]')
    doc = drill()
    assert doc["verdict"] == "failed"
    app = doc["services"][2]
    assert app["name"] == "app"
    assert not app["verified"]
    assert "verify" in (app["error"] or "")
    assert any(n.startswith("app: verify") for n in doc["notes"]), doc["notes"]
    assert [s["verified"] for s in doc["services"][:2]] == [True, True]
    _assert_scratch_gone(doc)
    assert doc["services"][2]["cleanup"]["processes_stopped"]


def test_a_service_waits_for_its_dependencies_and_is_not_started_without_them(
    example: Example,  # noqa: F811
) -> None:
    example.edit_plan('"value >= 1"', '"value >= 1000000"')  # the db's verify check fails
    doc = drill()
    assert doc["verdict"] == "failed"
    db, uploads, app = doc["services"]
    assert not db["verified"]
    assert uploads["verified"]
    assert app["error"] == "not started: dependency not verified: db"
    assert app["started_s"] is None
    assert app["recover_run_id"] is None
    assert app["service_run_id"] is None
    _assert_scratch_gone(doc)


def test_killed_drill_is_cleaned_up_by_the_next_readiness_pass(example: Example) -> None:  # noqa: F811
    from tasks.dr import store
    from tasks.dr.readiness import readiness

    # The app's verify waits, so the kill lands while the drill still holds every scratch
    # resource: a fast drill otherwise may already be cleaning up (db first) when killed.
    example.edit_plan(
        'type: http\n        url: "http://127.0.0.1:{{ scratch.port }}/health"\n'
        '        conditions: ["status == 200"]',
        'type: command\n        command: [sleep, "60"]\n        timeout_s: 120',
    )
    env = {**os.environ, **example.home.env}
    proc = subprocess.Popen(
        [KTLO, "dr", "drill", "example"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    scratch = example.home.path / "dr-scratch"
    deadline = time.monotonic() + 240
    pid_files: list[Path] = []
    while time.monotonic() < deadline and not pid_files:
        pid_files = list(scratch.glob("*/app/app.pid")) if scratch.exists() else []
        time.sleep(0.1)
    assert pid_files, "the drill never started the app"
    app_pid = int(pid_files[0].read_text())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    left = store.leftovers()
    assert {r.kind for r in left} == {"directory", "database"}
    assert _pid_alive(app_pid), "the app outlives the killed drill (it is detached)"

    report = readiness("example")
    assert list(report.cleaned) == [left[0].run_id]
    assert not store.leftovers()
    assert not _pid_alive(app_pid)
    for row in left:
        if row.kind == "database":
            assert not database_exists(row.name)
        else:
            assert not Path(row.name).exists()


def test_readiness_flips_are_reported_and_notified_once(example: Example) -> None:  # noqa: F811
    from sqlmodel import col, select

    from ktlo.store.db import session
    from tasks.backup.store import Backup
    from tasks.dr.readiness import readiness

    receiver = start_receiver()
    try:
        example.edit_plan(
            "schedule:", f'notify: ["json://127.0.0.1:{receiver.port}/hook"]\nschedule:'
        )
        assert drill()["verdict"] == "passed"

        def passes(expect_ready: bool, expect_problem: str | None, sent: int) -> None:
            for _ in range(2):  # a second pass with no change notifies nobody
                plan = readiness("example").plans[0]
                assert plan.ready is expect_ready, plan.problems
                if expect_problem:
                    assert any(expect_problem in p for p in plan.problems), plan.problems
                assert len(receiver.json_urls()) == sent

        passes(True, None, 0)  # the first pass records the state, nobody is told

        def age_backups(by: timedelta) -> None:
            with session() as s:
                for row in s.exec(select(Backup).where(col(Backup.source) == "dr-example-db")):
                    row.created_at = row.created_at - by
                    s.add(row)

        age_backups(timedelta(days=2))
        passes(False, "over the RPO", 1)
        assert "NOT READY" in receiver.json_urls()[0]["title"]
        _assert_status(example, ready=False, problem="over the RPO")
        age_backups(-timedelta(days=2))
        passes(True, None, 2)
        _assert_status(example, ready=True, problem=None)

        original = example.plan.read_text()
        example.plan.write_text(original + "# edited\n")
        passes(False, "needs drill: plan changed", 3)
        example.plan.write_text(original)
        passes(True, None, 4)

        (example.home.runbooks / "dr-example-app.yaml").unlink()
        passes(False, "recover runbook 'dr-example-app'", 5)
        assert "dr-example-app" in receiver.json_urls()[-1]["message"]
    finally:
        receiver.close()


def _assert_status(example: Example, *, ready: bool, problem: str | None) -> None:  # noqa: F811
    """`ktlo status` shows the plan's readiness beside the health checks."""
    out = cli("status", "--json", env=example.home.env)
    assert out.returncode == 0, out.stderr
    (plan,) = [p for p in json.loads(out.stdout)["dr_plans"] if p["name"] == "example"]
    assert plan["ready"] is ready
    assert plan["state"] == ("OK" if ready else "FAILING")
    if problem:
        assert any(problem in p for p in plan["problems"]), plan
    table = cli("status", env={**example.home.env, "COLUMNS": "200"})
    assert ("NOT READY" in table.stdout) is (not ready), table.stdout


def test_plan_errors_name_file_and_line(tmp_path: Path) -> None:
    from ktlo.errors import RunbookInvalid
    from tasks.dr.plan import load_plan

    def problems(text: str) -> list[str]:
        path = tmp_path / "p.yaml"
        path.write_text(text)
        try:
            load_plan(path)
        except RunbookInvalid as exc:
            return [str(p) for p in exc.problems]
        return []

    svc = "    rto_s: 1\n    rpo_s: 1\n    recover: {runbook: r}\n"
    cyc = problems(
        "name: p\nservices:\n  - name: a\n    depends_on: [b]\n" + svc
        + "  - name: b\n    depends_on: [a]\n" + svc
    )  # fmt: skip
    assert len(cyc) == 1
    assert cyc[0].endswith("dependency cycle: a -> b -> a")
    assert cyc[0].startswith(f"{tmp_path / 'p.yaml'}:4:")
    unknown = problems("name: p\nservices:\n  - name: a\n    depends_on: [zz]\n" + svc)
    assert unknown == [f"{tmp_path / 'p.yaml'}:4: service 'a': depends_on unknown service 'zz'"]
    typo = problems("name: p\nservices:\n  - name: a\n    rto: 5\n" + svc)
    assert typo
    assert ":4:" in typo[0]
    assert "unknown key 'rto'" in typo[0]
    assert problems("name: p\nservices:\n  - name: a\n" + svc) == []
