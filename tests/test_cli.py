"""The `ktlo` command as operators use it: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import Home
from tests.helpers import cli


def _touching_runbook(home: Home, marker: Path, broken: bool = False) -> Path:
    extra = "- id: broken\n            uses: nosuch\n" if broken else ""
    return home.runbook(
        "touch",
        f"""
        name: touch
        parameters:
          n: {{type: integer, default: 1, description: a number}}
        steps:
          - id: create
            uses: shell
            with: {{command: [touch, "{marker}"]}}
          - id: report
            uses: log
            with: {{message: "n={{{{ params.n }}}}"}}
          {extra}""",
    )


def test_run_succeeds_and_history_shows_it(home: Home, prefect_api: str, tmp_path: Path) -> None:
    marker = tmp_path / "made"
    _touching_runbook(home, marker)
    result = cli("run", "touch", "--param", "n=5", env=home.env)
    assert result.returncode == 0, result.stderr
    assert marker.exists()
    assert "succeeded" in result.stdout
    assert "/runs/flow-run/" in result.stdout
    history = json.loads(cli("history", "--json", env=home.env).stdout)
    run = history["runs"][0]
    assert run["runbook"] == "touch"
    assert run["status"] == "succeeded"
    assert run["params"] == {"n": 5}
    assert [s["id"] for s in run["steps"]] == ["create", "report"]
    listed = json.loads(cli("list", "--json", env=home.env).stdout)
    assert listed["runbooks"][0]["last_run"]["status"] == "succeeded"
    one = cli("history", run["id"][-12:], env=home.env)
    assert one.returncode == 0
    assert "create" in one.stdout


def test_failed_run_exits_1(home: Home, prefect_api: str) -> None:
    home.runbook(
        "fails", "name: fails\nsteps:\n  - id: no\n    uses: shell\n    with: {command: 'false'}\n"
    )
    result = cli("run", "fails", "--json", env=home.env)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["status"] == "failed"
    assert data["steps"][0]["error"].startswith("exit code 1")


def test_dry_run_runs_nothing(home: Home, tmp_path: Path) -> None:
    marker = tmp_path / "made"
    _touching_runbook(home, marker)
    result = cli(
        "run",
        "touch",
        "--dry-run",
        "-p",
        "n=3",
        env={**home.env, "PREFECT_API_URL": "http://127.0.0.1:9/api"},
    )
    assert result.returncode == 0, result.stderr
    assert "wave 1" in result.stdout
    assert "n=3" in result.stdout
    assert not marker.exists()


def test_invalid_runbook_is_refused_before_any_step(home: Home, tmp_path: Path) -> None:
    marker = tmp_path / "made"
    _touching_runbook(home, marker, broken=True)
    result = cli("run", "touch", env=home.env)
    assert result.returncode == 1
    assert "touch.yaml:" in result.stdout
    assert "unknown step type 'nosuch'" in result.stdout
    assert "nothing was run" in result.stderr
    assert not marker.exists()
    assert "Traceback" not in result.stdout + result.stderr


def test_bad_parameters_get_one_line_errors(home: Home, tmp_path: Path) -> None:
    _touching_runbook(home, tmp_path / "m")
    for args, message in [
        (["-p", "n=lots"], "parameter 'n': Input should be a valid integer"),
        (["-p", "colour=red"], "unknown parameter 'colour' (known: n)"),
        (["-p", "novalue"], "expected key=value"),
    ]:
        result = cli("run", "touch", *args, env=home.env)
        assert result.returncode == 1, args
        assert message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_runbook_suggests_a_name(home: Home, tmp_path: Path) -> None:
    _touching_runbook(home, tmp_path / "m")
    result = cli("run", "tuch", env=home.env)
    assert result.returncode == 1
    assert "no runbook named 'tuch'" in result.stderr
    assert "did you mean 'touch'" in result.stderr


def test_validate_exit_codes_and_json(home: Home, tmp_path: Path) -> None:
    _touching_runbook(home, tmp_path / "m")
    ok = cli("validate", env=home.env)
    assert ok.returncode == 0
    bad = home.runbook(
        "bad", "name: bad\nsteps:\n  - id: a\n    uses: log\n    with: {mesage: hi}\n"
    )
    result = cli("validate", "--json", env=home.env)
    assert result.returncode == 1
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["problems"][0]["line"] == 5
    assert data["problems"][0]["path"].endswith("bad.yaml")
    single = cli("validate", str(bad), env=home.env)
    assert single.returncode == 1
    assert (
        f"{bad}:5: step 'a': with: unknown key 'mesage' (did you mean 'message'?)" in single.stdout
    )


def test_store_errors_are_one_line(home: Home) -> None:
    result = cli(
        "history", env={**home.env, "KTLO_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    )
    assert result.returncode == 1
    assert "ktlo store" in result.stderr
    assert "Traceback" not in result.stderr
