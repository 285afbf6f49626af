"""What `ktlo backups list|show|verify` and `ktlo restore` do, without the terminal.

The CLI parses options, calls these in its own thread with a progress bar, and renders the
result; they run the same code as the `backup.verify` and `restore.<kind>` steps.
"""

from __future__ import annotations

from tasks.backup import store
from tasks.backup.catalog import find, resolve
from tasks.backup.kinds import kind_of
from tasks.backup.model import RestoreOutput
from tasks.backup.store import Backup
from tasks.backup.stream import Job
from tasks.backup.verify import VerifyInput, VerifyOutput, verify_backup

__all__ = ["find", "listing", "restore", "verify"]  # find: `ktlo backups show`


def listing(source: str | None, *, show_all: bool, limit: int) -> list[Backup]:
    """Newest first; complete backups only unless `show_all`."""
    rows = store.entries(source=source, statuses=None if show_all else (store.COMPLETE,))
    return rows[:limit]


def verify(
    job: Job,
    backup_id: str,
    *,
    source: str | None,
    deep: bool,
    scratch_dsn: str | None,
    scratch_dir: str | None,
) -> VerifyOutput:
    inputs = VerifyInput(
        backup_id=backup_id,
        source=source,
        deep=deep,
        scratch_dsn=scratch_dsn,
        scratch_dir=scratch_dir,
    )
    return verify_backup(inputs, job)


def restore(
    job: Job, backup_id: str, to: str, *, source: str | None, overwrite: bool, no_owner: bool
) -> RestoreOutput:
    """Restore into `to` (a path, or a DSN for a database backup), with the kind of the
    backup found: its restore inputs take the options that apply to it."""
    entry = resolve(backup_id, source)
    kind = kind_of(entry)
    inputs = kind.restore_input_for(
        entry, to, backup_id=backup_id, source=source, overwrite=overwrite, no_owner=no_owner
    )
    return kind.restore(inputs, job)
