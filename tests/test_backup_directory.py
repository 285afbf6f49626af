"""Directory backups: byte-equal round trips, atomicity under SIGKILL, corruption, failures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ktlo.store import audit
from tasks.backup import store
from tasks.backup.kinds.directory import (
    DirectoryBackupInput,
    DirectoryRestoreInput,
    backup_directory,
    restore_directory,
)
from tasks.backup.model import BackupError, DestinationSpec
from tasks.backup.stream import Job
from tasks.backup.verify import VerifyInput, verify_backup
from tests.backup_helpers import make_tree, snapshot_tree, tiny_filesystem, unlock
from tests.conftest import Home, unavailable
from tests.helpers import REPO

KEY = "dir-test-key-7f3a9c1e5b"


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    root = make_tree(tmp_path / "source")
    yield root
    unlock(tmp_path)


def test_round_trip_is_exact(home: Home, tree: Path, tmp_path: Path) -> None:
    out = backup_directory(DirectoryBackupInput(path=str(tree)), Job())
    entry = out.entry
    assert entry.status == "complete"
    assert entry.kind == "directory"
    assert entry.source == f"directory:{tree}"
    stored = Path(entry.location)
    assert stored.is_file()
    assert stored.stat().st_size == entry.size
    assert stored.name.endswith(".tar.zst")
    assert Path(f"{stored}.manifest.json").is_file()

    target = tmp_path / "restored"
    result = restore_directory(DirectoryRestoreInput(backup_id=entry.id, target=str(target)), Job())
    assert result.sha256 == entry.sha256
    assert snapshot_tree(target) == snapshot_tree(tree)
    unlock(target)


def test_plain_object_restores_with_zstd_and_tar(home: Home, tree: Path, tmp_path: Path) -> None:
    if not shutil.which("zstd"):
        unavailable("zstd is not installed")
    entry = backup_directory(DirectoryBackupInput(path=str(tree)), Job()).entry
    target = tmp_path / "by-hand"
    target.mkdir()
    subprocess.run(
        f"zstd -d -q < '{entry.location}' | tar -x -C '{target}'", shell=True, check=True
    )
    assert snapshot_tree(target) == snapshot_tree(tree)
    unlock(target)


def test_exclude_patterns(home: Home, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "cache").mkdir(parents=True)
    (src / "cache" / "big").write_text("x")
    (src / "keep.txt").write_text("k")
    (src / "drop.tmp").write_text("d")
    entry = backup_directory(
        DirectoryBackupInput(path=str(src), exclude=["*.tmp", "cache"]), Job()
    ).entry
    target = tmp_path / "out"
    restore_directory(DirectoryRestoreInput(backup_id=entry.id, target=str(target)), Job())
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_restore_refuses_a_non_empty_target_unless_overwrite(
    home: Home, tree: Path, tmp_path: Path
) -> None:
    entry = backup_directory(DirectoryBackupInput(path=str(tree)), Job()).entry
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "precious").write_text("do not lose me")
    with pytest.raises(BackupError, match="is not empty"):
        restore_directory(DirectoryRestoreInput(backup_id=entry.id, target=str(target)), Job())
    assert (target / "precious").read_text() == "do not lose me"

    restore_directory(
        DirectoryRestoreInput(
            backup_id="latest", source=entry.source, target=str(target), overwrite=True
        ),
        Job(),
    )
    assert not (target / "precious").exists()
    assert snapshot_tree(target) == snapshot_tree(tree)
    assert not [p for p in tmp_path.iterdir() if "ktlo-re" in p.name]  # no staging leftovers
    unlock(target)
    actions = [e.action for e in audit.events(action_prefix="backup.")]
    assert "backup.restored" in actions
    assert "backup.restore_failed" not in actions


def test_encrypted_round_trip_and_wrong_key(
    home: Home, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KTLO_SECRET_DIR_KEY", KEY)
    spec = DestinationSpec(key_secret="dir-key")
    entry = backup_directory(DirectoryBackupInput(path=str(tree), destination=spec), Job()).entry
    assert entry.encryption is not None
    assert entry.encryption["key_secret"] == "dir-key"
    data = Path(entry.location).read_bytes()
    assert b"keep the lights on" not in data
    assert data.startswith(b"KTLOENC1")
    # the key never reaches the catalog, the manifest or the audit trail
    manifest = Path(f"{entry.location}.manifest.json").read_text()
    assert KEY not in manifest
    assert KEY not in str(store.get(entry.id))
    assert all(KEY not in str(e.details) for e in audit.events())

    target = tmp_path / "decrypted"
    restore_directory(DirectoryRestoreInput(backup_id=entry.id, target=str(target)), Job())
    assert snapshot_tree(target) == snapshot_tree(tree)
    unlock(target)

    monkeypatch.setenv("KTLO_SECRET_DIR_KEY", "another-key-entirely-42")
    with pytest.raises(BackupError, match="wrong encryption key") as failure:
        restore_directory(
            DirectoryRestoreInput(backup_id=entry.id, target=str(tmp_path / "nope")), Job()
        )
    assert "another-key-entirely-42" not in str(failure.value)
    assert KEY not in str(failure.value)
    assert not (tmp_path / "nope").exists()
    # verification without the key still works: it re-hashes what is stored
    assert verify_backup(VerifyInput(backup_id=entry.id), Job()).sha256 == entry.sha256


@pytest.mark.parametrize("encrypted", [False, True])
def test_flipped_byte_is_detected(
    home: Home, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool
) -> None:
    monkeypatch.setenv("KTLO_SECRET_DIR_KEY", KEY)
    spec = DestinationSpec(key_secret="dir-key" if encrypted else None)
    entry = backup_directory(DirectoryBackupInput(path=str(tree), destination=spec), Job()).entry
    assert verify_backup(VerifyInput(backup_id=entry.id, deep=True), Job()).checks["files"] > 10
    stored = Path(entry.location)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))

    with pytest.raises(BackupError) as shallow:
        verify_backup(VerifyInput(backup_id=entry.id), Job())
    assert entry.id in str(shallow.value)
    assert "corrupt" in str(shallow.value)
    after = store.get(entry.id)
    assert after is not None
    assert after.verify_status == "failed"
    assert entry.id in (after.verify_error or "")

    with pytest.raises(BackupError) as deep:
        verify_backup(VerifyInput(backup_id=entry.id, deep=True), Job())
    assert entry.id in str(deep.value)

    target = tmp_path / "from-corrupt"
    with pytest.raises(BackupError, match=entry.id):
        restore_directory(DirectoryRestoreInput(backup_id=entry.id, target=str(target)), Job())
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if "ktlo-restore" in p.name]
    assert any(e.action == "backup.verify_failed" for e in audit.events())


def test_missing_path_fails_and_records_nothing(home: Home, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="does not exist"):
        backup_directory(DirectoryBackupInput(path=str(tmp_path / "nope")), Job())
    assert store.entries(statuses=None) == []


def test_destination_that_is_not_a_directory_fails_cleanly(
    home: Home, tree: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("I am not a directory")
    with pytest.raises(BackupError, match="cannot create"):
        backup_directory(DirectoryBackupInput(path=str(tree), destination=str(blocker)), Job())
    [entry] = store.entries(statuses=None)
    assert entry.status == "failed"
    assert store.entries() == []


def test_full_destination(home: Home, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "random.bin").write_bytes(os.urandom(4 << 20))  # incompressible: > the 1 MiB fs
    with tiny_filesystem(tmp_path / "full", "1m") as dest:
        with pytest.raises(BackupError, match="full") as failure:
            backup_directory(DirectoryBackupInput(path=str(src), destination=str(dest)), Job())
        assert "No space" in str(failure.value) or "no space" in str(failure.value)
        [entry] = store.entries(statuses=None)
        assert entry.status == "failed"
        assert "full" in (entry.error or "")
        leftovers = [p for p in dest.rglob("*") if p.is_file()]
        assert leftovers == []
    assert any(e.action == "backup.failed" for e in audit.events())


def test_read_only_destination(home: Home, tree: Path, tmp_path: Path) -> None:
    with (
        tiny_filesystem(tmp_path / "ro", "1m", readonly=True) as dest,
        pytest.raises(BackupError, match="not writable"),
    ):
        backup_directory(DirectoryBackupInput(path=str(tree), destination=str(dest)), Job())
    assert store.entries() == []


# -- SIGKILL mid-write ---------------------------------------------------------------------

CHILD = """
import sys
from tasks.backup.kinds.directory import DirectoryBackupInput, backup_directory
from tasks.backup.stream import Job
backup_directory(DirectoryBackupInput(path=sys.argv[1], source="killed"), Job())
"""


def _partials(root: Path) -> list[Path]:
    return [p for p in root.glob("*/.*.partial")] if root.is_dir() else []


def _bulk(root: Path, mib: int = 96) -> Path:
    """Hex text: compressible, so compressing it takes a while."""
    root.mkdir()
    for i in range(mib):
        (root / f"part-{i:03d}.txt").write_bytes(os.urandom(1 << 19).hex().encode())
    return root


def test_step_timeout_stops_the_backup_and_records_it_failed(
    home: Home, run: Any, tmp_path: Path
) -> None:
    src = _bulk(tmp_path / "bulk")
    path = home.runbook(
        "too-slow",
        f"""
        name: too-slow
        steps:
          - id: backup
            uses: backup.directory
            timeout_s: 0.3
            with: {{path: "{src}"}}
        """,
    )
    result = run(path)
    assert result.status == "failed"
    assert "timed out" in (result.steps["backup"].error or "")
    [entry] = store.entries(statuses=None)
    assert entry.status == "failed"
    assert _partials(home.path / "backups") == []
    assert [p for p in (home.path / "backups").rglob("*") if p.is_file()] == []


def test_sigkill_mid_write_leaves_no_backup_and_the_next_run_cleans_up(
    home: Home, run: Any, tmp_path: Path
) -> None:
    src = _bulk(tmp_path / "bulk", 192)
    dest = home.path / "backups"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(src)],
        cwd=REPO,
        env={**os.environ, "KTLO_HOME": str(home.path)},
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while time.monotonic() < deadline and child.poll() is None:
        partial = [p for p in _partials(dest) if p.stat().st_size > (2 << 20)]
        if partial:
            break
        time.sleep(0.005)
    assert partial, "the child never got to write its partial object"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()

    [entry] = store.entries(source="killed", statuses=None)
    assert entry.status == "writing"  # never complete
    assert store.entries(source="killed") == []
    assert [p for p in dest.rglob("*") if p.is_file() and not p.name.endswith(".partial")] == []

    path = home.runbook(
        "again",
        f"""
        name: again
        steps:
          - id: backup
            uses: backup.directory
            with: {{path: "{src}", source: killed}}
        """,
    )
    result = run(path)
    assert result.status == "succeeded", result.steps["backup"].error
    new_id = result.steps["backup"].output["backup_id"]
    interrupted = store.get(entry.id)
    assert interrupted is not None
    assert interrupted.status == "failed"
    assert "interrupted" in (interrupted.error or "")
    assert _partials(dest) == []
    assert [e.id for e in store.entries(source="killed")] == [new_id]
    assert any(e.action == "backup.interrupted" for e in audit.events())


# -- through runbooks ----------------------------------------------------------------------


def test_runbook_backup_verify_restore(home: Home, run: Any, tree: Path, tmp_path: Path) -> None:
    target = tmp_path / "restored"
    path = home.runbook(
        "dir-cycle",
        f"""
        name: dir-cycle
        steps:
          - id: backup
            uses: backup.directory
            with: {{path: "{tree}"}}
          - id: verify
            uses: backup.verify
            with: {{backup_id: "{{{{ steps.backup.output.backup_id }}}}", deep: true}}
          - id: fresh
            uses: backup.freshness
            with: {{source: "{{{{ steps.backup.output.source }}}}", max_age_s: 3600}}
          - id: restore
            uses: restore.directory
            with: {{backup_id: latest, source: "directory:{tree}", target: "{target}"}}
        """,
    )
    result = run(path)
    assert result.status == "succeeded", {k: s.error for k, s in result.steps.items()}
    out = result.steps["backup"].output
    assert set(out) >= {"backup_id", "size", "sha256", "location"}
    assert result.steps["verify"].output["deep"] is True
    assert result.steps["restore"].output["sha256"] == out["sha256"]
    assert snapshot_tree(target) == snapshot_tree(tree)
    unlock(target)
    entry = store.get(out["backup_id"])
    assert entry is not None
    assert entry.verify_status == "ok"
    assert entry.run_id == result.run.id
    actions = {e.action for e in audit.events(run_id=result.run.id)}
    assert {"backup.created", "backup.verified", "backup.restored"} <= actions


def test_runbook_fails_on_missing_path(home: Home, run: Any, tmp_path: Path) -> None:
    path = home.runbook(
        "missing",
        f"""
        name: missing
        steps:
          - id: backup
            uses: backup.directory
            with: {{path: "{tmp_path}/not-there"}}
        """,
    )
    result = run(path)
    assert result.status == "failed"
    assert "does not exist" in (result.steps["backup"].error or "")
    assert store.entries() == []


def test_runbook_fails_on_full_destination(home: Home, run: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "random.bin").write_bytes(os.urandom(3 << 20))
    with tiny_filesystem(tmp_path / "full", "1m") as dest:
        path = home.runbook(
            "full",
            f"""
            name: full
            steps:
              - id: backup
                uses: backup.directory
                with: {{path: "{src}", destination: "{dest}"}}
            """,
        )
        result = run(path)
        assert result.status == "failed"
        assert "destination is full" in (result.steps["backup"].error or "")
        assert store.entries() == []
        assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_freshness_fails_without_a_verified_backup(home: Home, run: Any, tree: Path) -> None:
    path = home.runbook(
        "stale",
        f"""
        name: stale
        steps:
          - id: backup
            uses: backup.directory
            with: {{path: "{tree}"}}
          - id: fresh
            uses: backup.freshness
            with: {{source: "directory:{tree}", max_age_s: 60}}
        """,
    )
    result = run(path)
    assert result.status == "failed"
    assert "no verified backup" in (result.steps["fresh"].error or "")
