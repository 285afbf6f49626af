"""SQLite backups are consistent snapshots, even while another thread keeps writing."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tasks.backup import store
from tasks.backup.kinds.sqlite import (
    SqliteBackupInput,
    SqliteRestoreInput,
    backup_sqlite,
    restore_sqlite,
)
from tasks.backup.model import BackupError
from tasks.backup.stream import Job
from tasks.backup.verify import VerifyInput, verify_backup
from tests.conftest import Home

INITIAL_ROWS = 20_000


def _create(path: Path, journal: str, rows: int = INITIAL_ROWS) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode={journal}")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT, blob BLOB)")
    conn.executemany(
        "INSERT INTO events (body, blob) VALUES (?, randomblob(512))",
        [(f"event {i} ✓",) for i in range(rows)],
    )
    conn.commit()
    conn.close()


class Writer(threading.Thread):
    """Inserts rows one transaction at a time until stopped."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=30)
            while not self.stop.is_set():
                with conn:
                    conn.execute(
                        "INSERT INTO events (body, blob) VALUES ('live', randomblob(2048))"
                    )
                self.written += 1
            conn.close()
        except BaseException as exc:
            self.error = exc


def _wait_for_writes(writer: Writer, count: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while writer.written < count:
        assert writer.error is None, writer.error
        assert time.monotonic() < deadline, f"the writer is stuck at {writer.written} rows"
        time.sleep(0.005)


def _rows(path: Path) -> tuple[int, int, int]:
    conn = sqlite3.connect(path)
    try:
        count, low, high = conn.execute("SELECT count(*), min(id), max(id) FROM events").fetchone()
        return count, low, high
    finally:
        conn.close()


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_backup_while_a_writer_inserts(home: Home, tmp_path: Path, journal: str) -> None:
    db = tmp_path / "live.db"
    _create(db, journal)
    writer = Writer(db)
    writer.start()
    ids: list[str] = []
    try:
        _wait_for_writes(writer, 20)  # the writer is really going
        # rows committed before the first backup (reading the live file could starve behind
        # the writer in rollback-journal mode)
        before = INITIAL_ROWS + writer.written
        for _ in range(3):
            ids.append(backup_sqlite(SqliteBackupInput(path=str(db)), Job()).entry.id)
            _wait_for_writes(writer, writer.written + 5)  # and keeps going between backups
    finally:
        writer.stop.set()
        writer.join(timeout=30)
    assert writer.error is None
    for n, backup_id in enumerate(ids):
        target = tmp_path / f"restored-{n}.db"
        out = restore_sqlite(SqliteRestoreInput(backup_id=backup_id, target=str(target)), Job())
        assert out.checks["integrity_check"] == "ok"
        count, low, high = _rows(target)
        # a consistent snapshot: every committed row up to some point, no gaps, no torn pages
        assert count >= before
        assert (low, high) == (1, count)
        assert (
            verify_backup(VerifyInput(backup_id=backup_id, deep=True), Job()).checks[
                "integrity_check"
            ]
            == "ok"
        )


def test_restore_over_a_live_database_needs_overwrite(home: Home, tmp_path: Path) -> None:
    source = tmp_path / "source.db"
    _create(source, "wal", rows=100)
    entry = backup_sqlite(SqliteBackupInput(path=str(source)), Job()).entry
    target = tmp_path / "target.db"
    _create(target, "wal", rows=5)
    reader = sqlite3.connect(target)  # someone has the target open
    assert reader.execute("SELECT count(*) FROM events").fetchone() == (5,)
    with pytest.raises(BackupError, match="not empty"):
        restore_sqlite(SqliteRestoreInput(backup_id=entry.id, target=str(target)), Job())
    restore_sqlite(
        SqliteRestoreInput(backup_id=entry.id, target=str(target), overwrite=True), Job()
    )
    assert reader.execute("SELECT count(*) FROM events").fetchone() == (100,)
    assert reader.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    reader.close()


def test_missing_and_invalid_databases_fail_clearly(home: Home, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="does not exist"):
        backup_sqlite(SqliteBackupInput(path=str(tmp_path / "nope.db")), Job())
    assert not (tmp_path / "nope.db").exists()  # not created by trying
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(BackupError, match="not a readable SQLite database"):
        backup_sqlite(SqliteBackupInput(path=str(junk)), Job())
    assert store.entries() == []
    assert [e.status for e in store.entries(statuses=None)] == ["failed"]


def test_the_ktlo_store_itself(home: Home, run: Any, tmp_path: Path) -> None:
    """The nightly runbook backs up ktlo's own SQLite store, which is written during the run."""
    store = home.path / "ktlo.db"
    path = home.runbook(
        "store",
        f"""
        name: store
        steps:
          - id: backup
            uses: backup.sqlite
            with: {{path: "{store}"}}
          - id: restore
            uses: restore.sqlite
            with:
              backup_id: "{{{{ steps.backup.output.backup_id }}}}"
              target: "{tmp_path}/store-copy.db"
        """,
    )
    result = run(path)
    assert result.status == "succeeded", {k: s.error for k, s in result.steps.items()}
    assert result.steps["restore"].output["checks"]["integrity_check"] == "ok"
    copy = sqlite3.connect(tmp_path / "store-copy.db")
    assert copy.execute("SELECT count(*) FROM ktlo_audit").fetchone()[0] > 0
    copy.close()
