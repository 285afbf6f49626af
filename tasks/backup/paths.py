"""Paths on this machine, as the file kinds (directory, SQLite) back up and restore them."""

from __future__ import annotations

import os
from pathlib import Path

from tasks.backup.model import BackupError, occupied


def local_path(path: str) -> Path:
    """A path from a step input or the command line: `~` expanded, absolute."""
    return Path(path).expanduser().absolute()


def is_empty_dir(path: Path) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def local_target(path: str, *, directory: bool, overwrite: bool) -> tuple[Path, bool]:
    """The path a restore writes to, and whether something is there already (a non-empty
    directory or file, which only `overwrite` may replace); what is there must be of the
    restore's type."""
    target = local_path(path)
    if not target.exists():
        return target, False
    if not (target.is_dir() if directory else target.is_file()):
        raise BackupError(
            f"target {target} exists and is not a {'directory' if directory else 'file'}"
        )
    in_use = not is_empty_dir(target) if directory else target.stat().st_size > 0
    if in_use and not overwrite:
        raise occupied(str(target))
    return target, in_use
