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
import time
from pathlib import Path
from typing import Any

import zstandard
from pydantic import Field

from ktlo.steps.registry import step_task
from tasks.backup.catalog import (
    Outcome,
    Plan,
    expect_kind,
    output_of,
    perform_backup,
    resolve,
    restoring,
    stored,
)
from tasks.backup.jobs import in_thread, logger, run_ids
from tasks.backup.model import (
    BackupError,
    BackupInput,
    BackupOutput,
    RestoreInput,
    RestoreOutput,
    as_spec,
    require_tool,
    summarize_backup,
    summarize_restore,
    tool_version,
)
from tasks.backup.stream import CountingReader, Job, Sink, Tool, compress

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


def backup_directory(
    inputs: DirectoryBackupInput,
    job: Job,
    *,
    run_id: str | None = None,
    step_id: str | None = None,
    log: Any = None,
) -> Outcome:
    root = Path(inputs.path).expanduser().absolute()
    _check_path(root)
    tar = require_tool("tar")
    plan = Plan(
        kind="directory",
        source=inputs.source or f"directory:{root}",
        extension=".tar.zst",
        compression=f"zstd-{inputs.level}",
        tool_versions={"tar": tool_version("tar"), "zstandard": zstandard.__version__},
        details={"path": str(root), "exclude": inputs.exclude, "host": socket.gethostname()},
    )
    warn = log or (lambda _m: None)

    def produce(sink: Sink) -> int:
        argv = [tar, *TAR_CREATE, *(f"--exclude={p}" for p in inputs.exclude)]
        proc = Tool([*argv, f"--directory={root}", "."], job, env=_tar_env())
        job.progress.start(f"backup {root}", None)
        reader = CountingReader(proc.stdout, job)
        try:
            compress(reader, sink, level=inputs.level, threads=-1)
        except BaseException:
            proc.kill()
            raise
        code = proc.check(ok=(0, 1))
        if code == 1:  # GNU tar: "some files differ" (changed while being read)
            warn(f"tar: files changed while being archived: {' | '.join(proc.stderr_lines())}")
        return reader.count

    return perform_backup(
        plan, as_spec(inputs.destination), produce, job, run_id=run_id, step_id=step_id, log=warn
    )


def _tar_env() -> dict[str, str]:
    # Names are bytes to tar: a C locale stores them exactly as they are on disk.
    return {**os.environ, "LC_ALL": "C"}


def is_empty_dir(path: Path) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is None


def extract(entry: Any, into: Path, job: Job) -> tuple[int, str]:
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


def restore_directory(
    inputs: DirectoryRestoreInput, job: Job, *, run_id: str | None = None
) -> RestoreOutput:
    started = time.perf_counter()
    entry = resolve(inputs.backup_id, inputs.source)
    expect_kind(entry, "directory")
    target = Path(inputs.target).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise BackupError(f"target {target} exists and is not a directory")
    if target.is_dir() and not is_empty_dir(target) and not inputs.overwrite:
        raise BackupError(
            f"target {target} is not empty (overwrite: true, or ktlo restore --overwrite, replaces it)"
        )
    with restoring(entry, str(target), run_id) as details:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.ktlo-restore-", dir=target.parent))
        try:
            size, digest = extract(entry, staging, job)
            _swap_in(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        details.update(bytes=size)
    return RestoreOutput(
        backup_id=entry.id,
        source=entry.source,
        target=str(target),
        bytes=size,
        sha256=digest,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )


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
    shutil.rmtree(old, ignore_errors=True)


def deep_check(entry: Any, job: Job, scratch_dir: str | None = None) -> dict[str, Any]:
    """Extract into a temporary directory and count what came out."""
    with tempfile.TemporaryDirectory(prefix="ktlo-verify-", dir=scratch_dir) as tmp:
        size, _ = extract(entry, Path(tmp), job)
        files = dirs = links = 0
        data = 0
        for _root, dirnames, filenames in os.walk(tmp):
            dirs += len(dirnames)
            for name in filenames:
                path = os.path.join(_root, name)
                if os.path.islink(path):
                    links += 1
                else:
                    files += 1
                    with contextlib.suppress(OSError):
                        data += os.lstat(path).st_size
            links += sum(1 for d in dirnames if os.path.islink(os.path.join(_root, d)))
    return {
        "archive_bytes": size,
        "files": files,
        "directories": dirs,
        "symlinks": links,
        "file_bytes": data,
    }


@step_task("backup.directory", DirectoryBackupInput, BackupOutput, summarize=summarize_backup)
async def backup_directory_step(inputs: DirectoryBackupInput) -> BackupOutput:
    """Back up a directory as a streamed tar + zstd archive."""
    run_id, step_id = run_ids()
    log = logger()
    outcome = await in_thread(
        lambda job: backup_directory(inputs, job, run_id=run_id, step_id=step_id, log=log.warning)
    )
    return output_of(outcome)


@step_task("restore.directory", DirectoryRestoreInput, RestoreOutput, summarize=summarize_restore)
async def restore_directory_step(inputs: DirectoryRestoreInput) -> RestoreOutput:
    """Restore a directory backup into a target directory."""
    run_id, _ = run_ids()
    return await in_thread(lambda job: restore_directory(inputs, job, run_id=run_id))
