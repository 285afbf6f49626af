"""Reading a stored backup back: decrypted, decompressed or as stored, and hash-checked.

Restores and deep checks stream the object from its destination; every byte read is hashed,
and `finish` compares size and sha256 with the catalog, so a corrupt object is named as such.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, cast

from ktlo import secrets
from tasks.backup import crypto
from tasks.backup.catalog import destination_of
from tasks.backup.model import BackupError
from tasks.backup.store import Backup
from tasks.backup.stream import (
    READ_SIZE,
    BackgroundWriter,
    CountingReader,
    Job,
    Tool,
    copy,
)


class Stored:
    """The plaintext (decrypted, still compressed) stream of a stored object, hash-checked."""

    def __init__(self, entry: Backup, job: Job, *, decrypt: bool = True):
        self.entry = entry
        self.job = job
        self._hash = hashlib.sha256()
        raw = destination_of(entry).open_reader(entry.key)
        job.progress.start(f"{entry.id}", entry.size)
        self.raw = CountingReader(raw, job, hasher=self._hash)
        self.reader: Any = self.raw
        if entry.encryption and decrypt:
            name = entry.encryption["key_secret"]
            try:
                secret = secrets.resolve(name)
            except secrets.SecretNotFound as exc:
                self.raw.close()
                raise BackupError(f"backup {entry.id} is encrypted: {exc}") from None
            try:
                self.reader = crypto.DecryptingReader(
                    cast(BinaryIO, self.raw), secret, backup_id=entry.id, secret_name=name
                )
            except BaseException:
                self.raw.close()
                raise

    def finish(self) -> str:
        """Read what is left (so all bytes are hashed) and check size and sha256."""
        while self.raw.read(1 << 20):
            pass
        self.raw.close()
        digest = self._hash.hexdigest()
        if self.raw.count != self.entry.size or digest != self.entry.sha256:
            raise BackupError(
                f"backup {self.entry.id} ({self.entry.source}) is corrupt: stored object "
                f"{self.entry.location} has {self.raw.count} bytes, sha256 {digest[:16]}…; "
                f"the catalog recorded {self.entry.size} bytes, sha256 {(self.entry.sha256 or '')[:16]}…"
            )
        return digest

    def decompress(self, write: Callable[[bytes], Any]) -> int:
        """Stream the zstd-decompressed content into `write`; returns the plaintext size."""
        import zstandard

        target = _Counting(write)
        try:
            zstandard.ZstdDecompressor().copy_stream(
                self.reader, cast(Any, target), read_size=READ_SIZE, write_size=READ_SIZE
            )
        except zstandard.ZstdError as exc:
            raise BackupError(
                f"backup {self.entry.id} ({self.entry.source}) is corrupt: zstd: {exc}"
            ) from None
        return target.count

    def feed(self, proc: Tool, what: str, *, decompress: bool = True) -> int:
        """Stream the content (zstd-decompressed, or as stored) into a tool's stdin from a
        second thread, so decoding overlaps with the tool's work; the tool must exit 0."""
        writer = BackgroundWriter(proc.stdin.write)
        try:
            if decompress:
                size = self.decompress(writer.write)
            else:
                size = copy(self.reader, writer.write, self.job)
            writer.close()
            proc.stdin.close()
        except BrokenPipeError:
            raise proc.failure(proc.wait(), what) from None
        except BaseException:
            proc.kill()
            with contextlib.suppress(BaseException):
                writer.close()
            raise
        proc.check(what)
        return size


class _Counting:
    def __init__(self, write: Callable[[bytes], Any]):
        self._write = write
        self.count = 0

    def write(self, data: bytes) -> int:
        self._write(data)
        self.count += len(data)
        return len(data)


@contextmanager
def stored(entry: Backup, job: Job, *, decrypt: bool = True) -> Iterator[Stored]:
    handle = Stored(entry, job, decrypt=decrypt)
    try:
        yield handle
    finally:
        with contextlib.suppress(Exception):
            handle.raw.close()
