"""The operator view's other sections, from what their domains stored: backups (age vs the
RPO of a freshness step, size trend, last restore), incidents (runs started, outcome, link),
patching (compliance per inventory group, pending reboot) and DR (readiness, last drill)."""

from __future__ import annotations

import datetime as dt
import textwrap

from ktlo.app.dashboard import pages, render
from ktlo.incidents.store import IncidentRecord, OutboxItem, OutboxStatus, WorkKind
from ktlo.status import RunStatus
from ktlo.store import audit
from ktlo.store.db import session
from ktlo.store.runs import finish_run, start_run
from tasks.backup import store as backups
from tasks.dr import store as dr
from tasks.patch import store as patch
from tests.conftest import Home

FRESHNESS = """
name: nightly
steps:
  - id: fresh
    uses: backup.freshness
    with: {source: /srv/app, max_age_s: 3600}
"""
INVENTORY = """
hosts:
  web-1: {connection: local, groups: [web]}
  web-2: {connection: local, groups: [web]}
  db-1: {connection: local, groups: [db]}
"""


def test_backups_incidents_patching_and_dr_sections(home: Home) -> None:
    now = dt.datetime.now(dt.UTC)
    home.runbook("nightly", FRESHNESS)
    (home.runbooks.parent / "inventory.yaml").write_text(textwrap.dedent(INVENTORY))
    for i, (age_h, size) in enumerate([(30, 1000), (5, 2000), (2, 3000)]):
        backups.add(
            backups.Backup(
                id=f"b{i}",
                source="/srv/app",
                kind="directory",
                status=backups.COMPLETE,
                created_at=now - dt.timedelta(hours=age_h),
                size=size,
                verify_status="ok" if i < 2 else None,  # the newest is not verified yet
            )
        )
    audit.record("backup.restored", "/srv/app", details={"backup_id": "b1"})

    start_run("run-abc", "restart-api", params={}, trigger="incident", url="http://ui/runs/run-abc")
    finish_run("run-abc", RunStatus.SUCCEEDED)
    with session() as s:
        s.add(IncidentRecord(id="i1", key="api-down", source="generic", summary="API is down"))
        s.add(
            OutboxItem(
                incident_id="i1",
                kind=WorkKind.START_RUN,
                target="restart-api",
                status=OutboxStatus.DONE,
                result="run-abc",
            )
        )

    patch.save_state("web-1", state="Installed", scanned_at=now)
    patch.save_state("web-2", state="InstalledPendingReboot", scanned_at=now)
    patch.save_state("db-1", state="Missing", scanned_at=now)

    dr.save_readiness("orders", False, ["orders-db: no recovery point within RPO"])
    dr.start_drill("drill-1", "orders", "hash")
    report = {
        "services": [
            {
                "name": "orders-db",
                "rto_target_s": 600,
                "rto_achieved_s": 42.4,
                "rpo_target_s": 3600,
                "rpo_achieved_s": 120.0,
            }
        ]
    }
    dr.finish_drill("drill-1", "passed", report)

    page = pages.operator_page()
    (backup,) = page.backups
    assert backup.newest_id == "b1"  # the newest *verified* one
    assert backup.max_age_s == 3600
    assert backup.fresh is False  # 5 h old against a 1 h RPO
    assert backup.sizes == [1000, 2000, 3000]
    assert backup.last_restore_ok is True

    (incident,) = page.incidents
    assert [(r.runbook, r.status, r.url) for r in incident.runs] == [
        ("restart-api", "succeeded", "http://ui/runs/run-abc")
    ]

    sections = {s.title: s for s in page.sections}
    patching = {row[0]: row for row in sections["Patching"].rows}
    assert patching["all"][1] == "1/3 (33%)"
    assert patching["web"][1:3] == ["1/2 (50%)", "web-2"]
    assert patching["db"][3] == "db-1 (Missing)"
    (plan,) = sections["DR"].rows
    assert plan[0] == "orders"
    assert plan[1].startswith("NOT READY: orders-db: no recovery point")
    assert plan[2].startswith("passed ")
    assert plan[3:] == ["orders-db: 42/600 s", "orders-db: 120/3600 s"]

    html = render.operator_html(page)
    for text in (
        "5h 0m / 1h 0m",
        "ok",
        "restart-api",
        'href="http://ui/runs/run-abc"',
        "web-2",
        "42/600 s",
    ):
        assert text in html, text
