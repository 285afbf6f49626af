"""`backup.directory` / `restore.directory`: a streamed tar + zstd archive of a directory tree.

GNU tar does the tree walk and the archive format (POSIX/pax: permissions, ownership,
sub-second mtimes, symlinks, empty directories, any file name); its output is piped straight
into the multi-threaded `zstandard` compressor and on to the destination, so the data is never
copied to a temporary place. The object is a plain `.tar.zst` (unless encrypted), so
`zstd -d < X.tar.zst | tar -x` restores it without ktlo too.

A restore extracts into a hidden staging directory next to the target and renames it into
place only when the whole archive was extracted and its checksum matched: a failed restore
leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import zstandard
from pydantic import Field

from ktlo import secrets
from tasks.backup.kinds.base import BackupKind, Restored, Scratch, register, restoring
from tasks.backup.model import (
    BackupError,
    BackupInput,
    RestoreInput,
    as_spec,
    require_tool,
    tool_version,
)
from tasks.backup.paths import is_empty_dir, local_path, local_target
from tasks.backup.reader import stored
from tasks.backup.store import Backup
from tasks.backup.stream import Job, Sink, Tool, stream_output
from tasks.backup.writer import Outcome, Plan, perform_backup

TAR_CREATE = (
    "--create",
    "--file=-",
    "--format=posix",
    "--pax-option=delete=atime,delete=ctime",  # keep mtime; atime/ctime only bloat headers
    "--sparse",
)
TAR_EXTRACT = ("--extract", "--file=-", "--preserve-permissions", "--delay-directory-restore")


class DirectoryBackupInput(BackupInput):
    path: str = Field(description="the directory to back up")
    exclude: list[str] = Field(
        default_factory=list, description="GNU tar --exclude patterns, e.g. '*.tmp', 'cache'"
    )
    level: int = Field(default=3, ge=1, le=19, description="zstd compression level")


class DirectoryRestoreInput(RestoreInput):
    target: str = Field(description="directory to restore into (created if missing)")


def _check_path(path: Path) -> None:
    if not path.exists():
        raise BackupError(f"path {path} does not exist")
    if not path.is_dir():
        raise BackupError(f"path {path} is not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise BackupError(f"path {path} is not readable")


class Directory(BackupKind[DirectoryBackupInput, DirectoryRestoreInput, Outcome]):
    name = "directory"

    def backup(self, inputs: DirectoryBackupInput, job: Job) -> Outcome:
        """Back up a directory as a streamed tar + zstd archive."""
        root = local_path(inputs.path)
        _check_path(root)
        tar = require_tool("tar")
        plan = Plan(
            kind=self.name,
            source=inputs.source or f"directory:{root}",
            extension=".tar.zst",
            compression=f"zstd-{inputs.level}",
            tool_versions={"tar": tool_version("tar"), "zstandard": zstandard.__version__},
            details={"path": str(root), "exclude": inputs.exclude, "host": socket.gethostname()},
        )

        def produce(sink: Sink) -> int:
            argv = [tar, *TAR_CREATE, *(f"--exclude={p}" for p in inputs.exclude)]
            proc = Tool([*argv, f"--directory={root}", "."], job, env=_tar_env())
            job.progress.start(f"backup {root}", None)
            count = stream_output(proc, sink, job, level=inputs.level, threads=-1)
            if proc.check(ok=(0, 1)) == 1:  # GNU tar: "some files differ" (changed while read)
                changed = " | ".join(proc.stderr_lines())
                job.warn(f"tar: files changed while being archived: {changed}")
            return count

        return perform_backup(plan, as_spec(inputs.destination), produce, job)

    def restore_entry(self, entry: Backup, inputs: DirectoryRestoreInput, job: Job) -> Restored:
        """Restore a directory backup into a target directory."""
        target, _ = local_target(inputs.target, directory=True, overwrite=inputs.overwrite)
        with restoring(entry, str(target), job) as done:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(
                tempfile.mkdtemp(prefix=f".{target.name}.ktlo-restore-", dir=target.parent)
            )
            try:
                done.bytes, done.sha256 = extract(entry, staging, job)
                _swap_in(staging, target)
            finally:
                if staging.exists():
                    shutil.rmtree(staging, ignore_errors=True)
        return done

    def deep_check(self, entry: Backup, job: Job, scratch: Scratch) -> dict[str, Any]:
        """Extract into a temporary directory and count what came out."""
        with tempfile.TemporaryDirectory(prefix="ktlo-verify-", dir=scratch.dir) as tmp:
            size, _ = extract(entry, Path(tmp), job)
            return {"archive_bytes": size, **_count(tmp)}


def _tar_env() -> dict[str, str]:
    # Names are bytes to tar: a C locale stores them exactly as they are on disk.
    return {**secrets.child_environment(), "LC_ALL": "C"}


def extract(entry: Backup, into: Path, job: Job) -> tuple[int, str]:
    """Stream a stored directory backup into `into` (which must exist); returns size, sha256."""
    tar = require_tool("tar")
    with stored(entry, job) as handle:
        proc = Tool(
            [tar, *TAR_EXTRACT, f"--directory={into}"],
            job,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=_tar_env(),
        )
        size = handle.feed(proc, f"extracting backup {entry.id}")
        digest = handle.finish()
    return size, digest


def _swap_in(staging: Path, target: Path) -> None:
    """Put the restored tree at `target`; a replaced tree is removed only after the swap."""
    if not target.exists():
        os.rename(staging, target)
        return
    if is_empty_dir(target):
        os.rename(staging, target)  # rename(2) replaces an empty directory
        return
    old = target.with_name(f".{target.name}.ktlo-replaced-{os.getpid()}")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    if old.is_symlink() or not old.is_dir():
        old.unlink()  # the link (or file) was replaced; what a link pointed to is left alone
    else:
        shutil.rmtree(old, ignore_errors=True)


def _count(tree: str) -> dict[str, int]:
    files = dirs = links = 0
    data = 0
    for root, dirnames, filenames in os.walk(tree):
        dirs += len(dirnames)
        for name in filenames:
            path = os.path.join(root, name)
            if os.path.islink(path):
                links += 1
            else:
                files += 1
                with contextlib.suppress(OSError):
                    data += os.lstat(path).st_size
        links += sum(1 for d in dirnames if os.path.islink(os.path.join(root, d)))
    return {"files": files, "directories": dirs, "symlinks": links, "file_bytes": data}


KIND = register(Directory())
backup_directory, restore_directory = KIND.backup, KIND.restore
