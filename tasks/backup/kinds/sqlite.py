"""`backup.sqlite` / `restore.sqlite`: consistent copies with SQLite's online backup API.

The backup API copies the database in one step inside a read transaction, so the copy is a
consistent snapshot even while other connections write (in WAL mode they are not even
blocked). It needs a database file to copy into, so the snapshot goes to a private temporary
file first and is then compressed with zstd into the destination.

A restore decompresses into a hidden file next to the target and runs `PRAGMA
integrity_check` on it; a new target is then renamed into place, an existing one (with
`overwrite`) is replaced through the backup API, which respects its locks and WAL file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

import zstandard
from pydantic import Field

from tasks.backup.kinds.base import BackupKind, Restored, Scratch, register, restoring
from tasks.backup.model import BackupError, BackupInput, RestoreInput, as_spec
from tasks.backup.paths import local_path, local_target
from tasks.backup.reader import stored
from tasks.backup.store import Backup
from tasks.backup.stream import CountingReader, Job, Sink, compress
from tasks.backup.writer import Outcome, Plan, perform_backup


class SqliteBackupInput(BackupInput):
    path: str = Field(description="the SQLite database file")
    level: int = Field(default=3, ge=1, le=19, description="zstd compression level")
    scratch_dir: str | None = Field(
        default=None, description="where the snapshot is taken before compression (default: TMPDIR)"
    )


class SqliteRestoreInput(RestoreInput):
    target: str = Field(description="database file to restore into")


def _connect_readonly(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=60)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise BackupError(f"{path} is not a readable SQLite database: {exc}") from None
    return conn


def snapshot(path: Path, into: Path) -> None:
    """A consistent copy of a live database, taken in one step of the backup API."""
    source = _connect_readonly(path)
    try:
        target = sqlite3.connect(into)
        try:
            source.backup(target, pages=-1)  # one step: one read transaction, one snapshot
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise BackupError(f"SQLite backup of {path} failed: {exc}") from None
    finally:
        source.close()


def integrity(path: Path) -> dict[str, Any]:
    """`PRAGMA integrity_check` of a restored copy (ours, so opened read-write: WAL needs it)."""
    conn = sqlite3.connect(path)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[
            0
        ]
    except sqlite3.DatabaseError as exc:
        return {"integrity_check": str(exc), "tables": 0}
    finally:
        conn.close()
    return {"integrity_check": "; ".join(rows[:5]), "tables": tables}


class Sqlite(BackupKind[SqliteBackupInput, SqliteRestoreInput, Outcome]):
    name = "sqlite"

    def backup(self, inputs: SqliteBackupInput, job: Job) -> Outcome:
        """Back up a SQLite database with the online backup API (safe while it is written)."""
        path = local_path(inputs.path)
        if not path.is_file():
            raise BackupError(f"SQLite database {path} does not exist")
        plan = Plan(
            kind=self.name,
            source=inputs.source or f"sqlite:{path}",
            extension=".sqlite.zst",
            compression=f"zstd-{inputs.level}",
            tool_versions={"sqlite": sqlite3.sqlite_version, "zstandard": zstandard.__version__},
            details={"path": str(path), "host": socket.gethostname()},
        )

        def produce(sink: Sink) -> int:
            with tempfile.TemporaryDirectory(prefix="ktlo-sqlite-", dir=inputs.scratch_dir) as tmp:
                copy = Path(tmp) / "snapshot.db"
                job.progress.start(f"snapshot {path}", None)
                snapshot(path, copy)
                job.progress.start(f"backup {path}", copy.stat().st_size)
                with open(copy, "rb") as raw:
                    reader = CountingReader(raw, job)
                    compress(reader, sink, level=inputs.level)
                return reader.count

        return perform_backup(plan, as_spec(inputs.destination), produce, job)

    def restore_entry(self, entry: Backup, inputs: SqliteRestoreInput, job: Job) -> Restored:
        """Restore a SQLite backup into a database file (checked with integrity_check)."""
        target, in_use = local_target(inputs.target, directory=False, overwrite=inputs.overwrite)
        with restoring(entry, str(target), job) as done:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = target.with_name(f".{target.name}.ktlo-restore-{os.getpid()}")
            try:
                done.bytes, done.sha256 = decompress_to(entry, staging, job)
                done.checks = integrity(staging)
                if done.checks["integrity_check"] != "ok":
                    raise BackupError(
                        f"backup {entry.id}: restored database fails integrity_check: "
                        f"{done.checks['integrity_check']}"
                    )
                if in_use:
                    _copy_into(staging, target)
                else:
                    for stale in (Path(f"{target}-wal"), Path(f"{target}-shm")):
                        with contextlib.suppress(FileNotFoundError):
                            stale.unlink()
                    os.rename(staging, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    staging.unlink()
        return done

    def deep_check(self, entry: Backup, job: Job, scratch: Scratch) -> dict[str, Any]:
        """Decompress into a temporary file and run `PRAGMA integrity_check` on it."""
        with tempfile.TemporaryDirectory(prefix="ktlo-verify-", dir=scratch.dir) as tmp:
            copy = Path(tmp) / "restored.db"
            size, _ = decompress_to(entry, copy, job)
            checks = integrity(copy)
        if checks["integrity_check"] != "ok":
            raise BackupError(
                f"backup {entry.id} ({entry.source}): integrity_check failed: {checks['integrity_check']}"
            )
        return {"bytes": size, **checks}


def decompress_to(entry: Backup, path: Path, job: Job) -> tuple[int, str]:
    with stored(entry, job) as handle, open(path, "wb") as out:
        size = handle.decompress(out.write)
        out.flush()
        os.fsync(out.fileno())
        digest = handle.finish()
    return size, digest


def _copy_into(restored: Path, target: Path) -> None:
    source = sqlite3.connect(restored)
    dest = sqlite3.connect(target, timeout=60)
    try:
        source.backup(dest, pages=-1)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot replace {target}: {exc}") from None
    finally:
        dest.close()
        source.close()


KIND = register(Sqlite())
backup_sqlite, restore_sqlite = KIND.backup, KIND.restore
