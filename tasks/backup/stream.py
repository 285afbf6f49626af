"""Byte plumbing shared by every kind: the hashing/encrypting sink, readers, tools, progress.

Backups and restores are synchronous code run in a worker thread (so the CLI can call them
directly and a step can run them off the event loop). Data flows in large chunks through
pipes from/to the real tools (`tar`, `pg_dump`, `mariadb-dump`, ...); Python only hashes,
compresses with the `zstandard` library (multi-threaded) and encrypts, so nothing is copied to
a temporary place. Cancellation is a `threading.Event` checked between chunks, plus killing
the tool's process group.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, Protocol

from ktlo import secrets
from ktlo.processes import child_options
from tasks.backup.crypto import Encryptor
from tasks.backup.destinations import Writer
from tasks.backup.model import BackupError

READ_SIZE = 1 << 20


class Cancelled(BackupError):
    pass


class Progress(Protocol):
    """Told how far a long operation is; the CLI draws a bar, a flow run logs periodically."""

    def start(self, description: str, total: int | None) -> None: ...
    def advance(self, done: int) -> None: ...


class NoProgress:
    def start(self, description: str, total: int | None) -> None:
        pass

    def advance(self, done: int) -> None:
        pass


def _ignore(_message: str) -> None:
    pass


@dataclass
class Job:
    """What a running backup/restore carries around: progress, cancellation, a heartbeat,
    and for a step, the run and step it belongs to and where its warnings go (the run's log).
    Outside a step (the CLI, direct calls) they are unset and warnings are dropped."""

    progress: Progress = field(default_factory=NoProgress)
    cancel: threading.Event = field(default_factory=threading.Event)
    run_id: str | None = None
    step_id: str | None = None
    warn: Callable[[str], None] = _ignore
    heartbeat: Callable[[], None] | None = None
    heartbeat_every_s: float = 15.0
    _last_beat: float = field(default_factory=time.monotonic)
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled("cancelled")
        if (
            self.heartbeat is not None
            and time.monotonic() - self._last_beat > self.heartbeat_every_s
        ):
            self._last_beat = time.monotonic()
            self.heartbeat()

    def adopt(self, proc: subprocess.Popen[bytes]) -> None:
        self._processes.append(proc)

    def kill_all(self) -> None:
        for proc in self._processes:
            kill_group(proc)

    def stop(self) -> None:
        """Cancel: the work stops at its next chunk, and the tools it started are killed."""
        self.cancel.set()
        self.kill_all()


class Sink:
    """Where the stored bytes go: optional encryption, then sha256 and size, then the writer."""

    def __init__(self, writer: Writer, encryptor: Encryptor | None, job: Job):
        self._writer = writer
        self._encryptor = encryptor
        self._job = job
        self._hash = hashlib.sha256()
        self.size = 0
        self.input_bytes = 0  # plaintext bytes before encryption (after compression)

    def _store(self, data: bytes) -> None:
        if data:
            self._hash.update(data)
            self.size += len(data)
            self._writer.write(data)

    def write(self, data: bytes | memoryview) -> int:
        self._job.check()
        n = len(data)
        if self._encryptor is not None:
            self._store(self._encryptor.update(data))
        else:
            self._store(bytes(data) if isinstance(data, memoryview) else data)
        return n

    def close(self) -> None:
        """Finish the stream (the final encrypted chunk). Idempotent."""
        if self._encryptor is not None:
            self._store(self._encryptor.finalize())
            self._encryptor = None

    def flush(self) -> None:
        pass

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class CountingReader:
    """Counts and reports bytes read from a file-like object; checks for cancellation."""

    def __init__(self, raw: IO[bytes] | BinaryIO | Any, job: Job, hasher: Any = None):
        self._raw = raw
        self._job = job
        self._hash = hasher
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        self._job.check()
        data: bytes = self._raw.read(size)
        if self._hash is not None:
            self._hash.update(data)
        self.count += len(data)
        self._job.progress.advance(self.count)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()


class Tool:
    """A child process (own process group) whose stderr is collected on a thread."""

    def __init__(
        self,
        argv: Sequence[str],
        job: Job,
        *,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ):
        self.name = os.path.basename(argv[0])
        try:
            self.proc = subprocess.Popen(
                list(argv),
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd,
                **child_options(),
            )
        except FileNotFoundError:
            raise BackupError(f"'{argv[0]}' is not installed (or not on PATH)") from None
        job.adopt(self.proc)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                grow_pipe(pipe.fileno())
        self._stderr = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(self.proc.stderr.readline, b""):
            if len(self._stderr) < 64 * 1024:
                self._stderr += line

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def wait(self) -> int:
        code = self.proc.wait()
        self._reader.join(timeout=10)
        return code

    def stderr_lines(self, last: int = 5) -> list[str]:
        text = secrets.redact(self._stderr.decode(errors="replace"))
        return [line.strip() for line in text.strip().splitlines() if line.strip()][-last:]

    def failure(self, code: int, what: str = "") -> BackupError:
        detail = " | ".join(self.stderr_lines())
        prefix = f"{what}: " if what else ""
        return BackupError(
            f"{prefix}{self.name} exited with {code}" + (f": {detail}" if detail else "")
        )

    def check(self, what: str = "", ok: Sequence[int] = (0,)) -> int:
        code = self.wait()
        if code not in ok:
            raise self.failure(code, what)
        return code

    def kill(self) -> None:
        kill_group(self.proc)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)


def grow_pipe(fd: int, size: int = 1 << 20) -> None:
    """Bigger pipe buffers: fewer wake-ups between us and the tool (Linux; best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def copy(reader: Any, write: Callable[[bytes], Any], job: Job, size: int = READ_SIZE) -> int:
    """Pump a reader into a writer in large chunks; returns the byte count."""
    total = 0
    while True:
        job.check()
        chunk = reader.read(size)
        if not chunk:
            return total
        write(chunk)
        total += len(chunk)


def stream_output(
    proc: Tool, sink: Sink, job: Job, *, level: int | None = 3, threads: int = 0
) -> int:
    """Stream a tool's stdout into `sink`, zstd-compressed at `level` (None: as it is), and
    kill the tool if that fails; returns the bytes the tool wrote. The caller checks its exit."""
    reader = CountingReader(proc.stdout, job)
    try:
        if level is None:
            copy(reader, sink.write, job)
        else:
            compress(reader, sink, level=level, threads=threads)
    except BaseException:
        proc.kill()
        raise
    return reader.count


def compress(reader: Any, sink: Any, *, level: int = 3, threads: int = 0) -> None:
    """zstd-compress everything `reader` yields into `sink` (with a content checksum).

    `threads=-1` compresses on one worker per core (the output is still one standard frame),
    while this thread keeps reading the source.
    """
    import zstandard

    zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True).copy_stream(
        reader, sink, read_size=READ_SIZE, write_size=READ_SIZE
    )


class BackgroundWriter:
    """Hands chunks to `write` on a thread, so producing the next chunk (decrypting,
    decompressing) overlaps with the consumer (tar, pg_restore, mariadb) taking the last one.

    A failure of `write` (the tool died: BrokenPipeError) is raised by the next `write` or by
    `close`; the thread keeps draining the queue so the producer never blocks on a dead tool.
    """

    def __init__(self, write: Callable[[bytes], Any], depth: int = 8):
        import queue

        self._write = write
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ktlo-backup-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(chunk)
                except BaseException as exc:
                    self._error = exc

    def write(self, data: bytes) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(bytes(data))
        return len(data)

    def close(self) -> None:
        """Wait until everything is written; raise what went wrong on the way."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
