"""Small operator-facing fixes (issue 12, item 9): a restore over a symlink leaves nothing
behind, a malformed JSON parameter is named, GET/HEAD on a hook is 405, a bad option is a
usage error, and a run id cut by a narrow terminal still matches."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

from tasks.backup.kinds.directory import (
    DirectoryBackupInput,
    DirectoryRestoreInput,
    backup_directory,
    restore_directory,
)
from tasks.backup.stream import Job
from tests.backup_helpers import snapshot_tree
from tests.conftest import Home
from tests.helpers import cli
from tests.webhook_helpers import Receiver

ARRAY = """
name: arrays
parameters:
  items: {type: array}
steps:
  - id: say
    uses: log
    with: {message: "{{ params.items }}"}
"""


def test_restore_overwrite_onto_a_symlink_leaves_no_link_behind(home: Home, tmp_path: Path) -> None:
    work = tmp_path / "work"
    source = work / "source"
    source.mkdir(parents=True)
    (source / "data.txt").write_text("restored\n")
    entry = backup_directory(DirectoryBackupInput(path=str(source)), Job()).entry
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("not ours to delete")
    target = work / "target"
    target.symlink_to(elsewhere, target_is_directory=True)
    restore_directory(
        DirectoryRestoreInput(backup_id=entry.id, target=str(target), overwrite=True), Job()
    )
    assert not target.is_symlink()
    assert snapshot_tree(target) == snapshot_tree(source)
    assert (elsewhere / "precious").read_text() == "not ours to delete"
    assert sorted(p.name for p in work.iterdir()) == ["elsewhere", "source", "target"]


def test_a_malformed_json_array_parameter_is_named(home: Home) -> None:
    home.runbook("arrays", ARRAY)
    bad = cli("run", "arrays", "--dry-run", "-p", "items=[1,2", env=home.env)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: --param items: malformed JSON array"), bad.stderr
    assert len(bad.stderr.splitlines()) == 1
    ok = cli("run", "arrays", "--dry-run", "-p", "items=a,b", env=home.env)
    assert ok.returncode == 0, ok.stderr
    assert "['a', 'b']" in ok.stdout


def test_get_and_head_on_a_hook_are_405(home: Home) -> None:
    receiver = Receiver()
    try:
        for method in ("GET", "HEAD"):
            response = httpx.request(
                method,
                f"{receiver.url}/hooks/alertmanager",
                headers={"authorization": "Bearer test-token-7f3a"},
                timeout=10,
            )
            assert response.status_code == 405
            assert response.headers["allow"] == "POST"
    finally:
        receiver.close()


def test_a_bad_option_value_is_a_usage_error(home: Home) -> None:
    for args in (("history", "--limit", "-1"), ("incidents", "--limit", "0")):
        result = cli(*args, env=home.env)
        assert result.returncode == 2
        assert "internal error" not in result.stderr
        assert "Invalid value for '--limit'" in result.stderr


def test_a_run_id_cut_by_a_narrow_terminal_still_matches(home: Home, prefect_api: str) -> None:
    home.runbook("tiny", "name: tiny\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi}\n")
    assert cli("run", "tiny", env=home.env).returncode == 0
    run_id = json.loads(cli("history", "--json", env=home.env).stdout)["runs"][0]["id"]
    narrow = cli("history", env={**home.env, "COLUMNS": "50"})
    assert run_id[-12:] in narrow.stdout  # the id column is never cut
    for shown in (run_id[-12:-4], run_id[-12:-4] + "…"):  # as a cut id is copied
        one = cli("history", shown, env=home.env)
        assert one.returncode == 0, one.stderr
        assert re.search(rf"run {run_id}\b", one.stdout)
