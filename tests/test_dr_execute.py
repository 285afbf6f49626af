"""`ktlo dr execute`: the example plan recovered for real into a throwaway PostgreSQL database
and directories (the plan's `target:`s), only after an approval, with the drill's report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import yaml

from tests.dr_helpers import Example, database_exists, drop_database, example  # noqa: F401
from tests.helpers import KTLO, cli
from tests.serve_helpers import wait_until

PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _real_targets(example: Example, root: Path, database: str, port: int) -> None:  # noqa: F811
    doc = yaml.safe_load(example.plan.read_text())
    targets = {
        "db": {"dir": str(root / "db"), "postgres": PG, "database": database},
        "uploads": {"dir": str(root / "uploads")},
        "app": {"dir": str(root / "app"), "port": port},
    }
    for svc in doc["services"]:
        svc["target"] = targets[svc["name"]]
        Path(targets[svc["name"]]["dir"]).mkdir(parents=True)
    example.plan.write_text(yaml.safe_dump(doc, sort_keys=False))


def _execute(example: Example) -> subprocess.Popen[str]:  # noqa: F811
    return subprocess.Popen(
        [KTLO, "dr", "execute", "example", "--json"],
        env={**os.environ, **example.home.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_execute_waits_for_approval_then_recovers_into_the_real_targets(
    example: Example,  # noqa: F811
    tmp_path: Path,
) -> None:
    import psycopg

    from ktlo.engine import approvals
    from tasks.dr.scratch import free_port

    database = f"dr_exec_{uuid.uuid4().hex[:10]}"
    root = tmp_path / "real"
    _real_targets(example, root, database, free_port())
    proc = _execute(example)
    app_pid = None
    try:
        waiting = wait_until(lambda: approvals.pending() or None, 180, "the approval")
        assert "REAL targets" in waiting[0].message
        assert not database_exists(database)  # nothing is touched before the approval
        assert not (root / "uploads" / "uploads").exists()
        ok = cli("approve", waiting[0].flow_run_id, "-m", "test", env=example.home.env)
        assert ok.returncode == 0, ok.stderr
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        doc = json.loads(out)
        assert doc["mode"] == "execute"
        assert doc["verdict"] == "passed", doc["notes"]
        assert doc["notes"][0].startswith("approved by ")
        assert [s["verified"] for s in doc["services"]] == [True, True, True]
        # the recovery is real and kept: database, files, and the running app
        with psycopg.connect(f"host=127.0.0.1 user=postgres dbname={database}") as conn:
            row = conn.execute("SELECT count(*) FROM orders").fetchone()
            assert row is not None
            assert row[0] >= 1
        assert (root / "uploads" / "uploads" / "2026" / "invoice-1.txt").stat().st_size > 0
        app_pid = int((root / "app" / "app.pid").read_text())
        os.kill(app_pid, 0)
        for svc in doc["services"]:
            assert svc["cleanup"]["databases_dropped"] == []
            assert svc["cleanup"]["directories_removed"] == []
        stored = cli("dr", "report", doc["run_id"], "--format", "json", env=example.home.env)
        assert json.loads(stored.stdout)["services"] == doc["services"]
        assert doc["audit"]["actions"] == ["dr.execute.start", "dr.execute.finish"]
        md = cli("dr", "report", doc["run_id"], "--format", "md", env=example.home.env)
        assert md.stdout.startswith(f"# DR recovery of `{doc['plan']}`"), md.stdout[:200]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if app_pid is not None:
            os.kill(app_pid, signal.SIGTERM)
        drop_database(database)


def test_execute_rejected_recovers_nothing_and_reports_why(
    example: Example,  # noqa: F811
    tmp_path: Path,
) -> None:
    from ktlo.engine import approvals
    from tasks.dr.scratch import free_port

    database = f"dr_exec_{uuid.uuid4().hex[:10]}"
    _real_targets(example, tmp_path / "real", database, free_port())
    proc = _execute(example)
    try:
        waiting = wait_until(lambda: approvals.pending() or None, 180, "the approval")
        cli("approve", waiting[0].flow_run_id, "--reject", "-m", "not now", env=example.home.env)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, err[-3000:]
        doc = json.loads(out)
        assert doc["verdict"] == "failed"
        assert "not approved" in doc["notes"][0]
        assert "not now" in doc["notes"][0]
        assert all(s["error"].startswith("not started: not approved") for s in doc["services"])
        assert not database_exists(database)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        drop_database(database)
