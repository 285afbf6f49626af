"""The life of a backup: catalog entry, atomic write, manifest, audit; and reading one back.

`perform_backup` is the one path every kind of backup takes:

1. clean up after writers that died (their entries become `failed`, their partials go);
2. insert a `writing` catalog entry (owner = this process, heartbeats while it runs);
3. stream the data through the sink into a partial object, then commit it atomically;
4. write the manifest next to it;
5. only then mark the entry `complete` and audit `backup.created`.

Any failure on the way aborts the partial, marks the entry `failed` and audits it, so a
failed backup is never taken for a good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, BinaryIO, cast

from ktlo import secrets
from ktlo.store import audit
from ktlo.store.models import utcnow
from tasks.backup import crypto, store
from tasks.backup.destinations import Destination, open_destination, stored_spec
from tasks.backup.model import (
    LATEST,
    BackupError,
    BackupOutput,
    DestinationSpec,
    Manifest,
    new_backup_id,
    source_slug,
)
from tasks.backup.store import Backup
from tasks.backup.stream import (
    READ_SIZE,
    BackgroundWriter,
    CountingReader,
    Job,
    Sink,
    Tool,
    copy,
)

STALE_AFTER = timedelta(minutes=10)  # a writer on another host without a heartbeat for this long


def _start_ticks(pid: int) -> str | None:
    """Process start time in clock ticks since boot (with the pid, it identifies a process)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    except OSError:
        return None
    if fields[0] in ("Z", "X"):  # a zombie has finished: it writes nothing any more
        return None
    return fields[19]


def owner_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}|{pid}|{_start_ticks(pid) or ''}"


def writer_is_alive(entry: Backup) -> bool:
    host, _, rest = entry.owner.partition("|")
    pid_text, _, ticks = rest.partition("|")
    if host == socket.gethostname() and pid_text.isdigit():
        return _start_ticks(int(pid_text)) == ticks
    beat = store.aware(entry.heartbeat_at or entry.created_at)
    return beat is not None and utcnow() - beat < STALE_AFTER


@dataclass
class Outcome:
    entry: Backup
    duration_ms: float


@dataclass
class Plan:
    """What a kind module knows about the backup it is about to make."""

    kind: str
    source: str
    extension: str
    compression: str
    tool_versions: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def reap(dest: Destination) -> list[str]:
    """Mark entries of dead writers on `dest` failed and remove their leftovers."""
    spec = stored_spec(dest)
    notes: list[str] = []
    live: set[str] = set()
    dead_uploads: set[str] = set()
    for entry in store.entries(statuses=(store.WRITING,)):
        if entry.destination != spec:
            continue
        if writer_is_alive(entry):
            live.add(entry.key)
            continue
        if entry.upload_id:
            dead_uploads.add(entry.upload_id)
        with contextlib.suppress(BackupError):
            dest.delete(entry.key)  # in case it died between publishing and completing
        store.update(
            entry.id, status=store.FAILED, error="interrupted: the writing process is gone"
        )
        audit.record(
            "backup.interrupted",
            entry.source,
            details={"backup_id": entry.id, "location": entry.location},
        )
        notes.append(f"backup {entry.id} was interrupted; cleaned up")
    for leftover in dest.sweep_partials(live, dead_uploads):
        notes.append(f"removed partial leftover {leftover}")
    return notes


def perform_backup(
    plan: Plan,
    spec: DestinationSpec,
    produce: Callable[[Sink], int],
    job: Job,
    *,
    run_id: str | None = None,
    step_id: str | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> Outcome:
    """Run `produce(sink)` (it returns the source bytes read) into a new catalog entry."""
    started = time.perf_counter()
    dest = open_destination(spec)
    encryptor, encryption = None, None
    if spec.key_secret:
        secret = secrets.resolve(spec.key_secret)
        encryptor = crypto.Encryptor(secret)
        encryption = crypto.description(spec.key_secret, secret)
    for note in reap(dest):
        log(note)
    created = utcnow()
    backup_id = new_backup_id(created)
    key = f"{source_slug(plan.source)}/{backup_id}{plan.extension}" + (".enc" if encryptor else "")
    entry = store.add(
        Backup(
            id=backup_id,
            source=plan.source,
            kind=plan.kind,
            created_at=created,
            destination=stored_spec(dest),
            location=dest.location(key),
            key=key,
            compression=plan.compression,
            encryption=encryption,
            tool_versions=plan.tool_versions,
            details=secrets.redact(plan.details),
            owner=owner_id(),
            heartbeat_at=created,
            run_id=run_id,
            step_id=step_id,
        )
    )
    job.heartbeat = lambda: _beat(backup_id)
    if hasattr(dest, "on_upload_started"):
        dest.on_upload_started = lambda upload_id: store.update(backup_id, upload_id=upload_id)
    writer = None
    published = False
    try:
        writer = dest.open_writer(key)
        sink = Sink(writer, encryptor, job)
        input_bytes = produce(sink)
        sink.close()
        writer.commit()
        published = True
        manifest = Manifest(
            id=backup_id,
            source=plan.source,
            kind=plan.kind,
            created=created,
            object=key,
            size=sink.size,
            sha256=sink.sha256,
            input_bytes=input_bytes,
            compression=plan.compression,
            encryption=encryption,
            tool_versions=plan.tool_versions,
            details=entry.details,
        )
        dest.put_manifest(key, manifest)
    except BaseException as exc:
        if writer is not None and not published:
            writer.abort()
        if published:
            with contextlib.suppress(Exception):
                dest.delete(key)
        message = secrets.redact(str(exc) or type(exc).__name__)
        if not isinstance(exc, BackupError | OSError):
            message = f"{type(exc).__name__}: {message}"
        store.update(backup_id, status=store.FAILED, error=message, heartbeat_at=None)
        audit.record(
            "backup.failed",
            plan.source,
            run_id=run_id,
            details={"backup_id": backup_id, "kind": plan.kind, "error": message},
        )
        if isinstance(exc, BackupError):
            raise BackupError(f"backup of {plan.source} failed: {message}") from None
        if isinstance(exc, Exception):
            raise BackupError(f"backup of {plan.source} failed: {message}") from None
        raise
    done = store.update(
        backup_id,
        status=store.COMPLETE,
        completed_at=utcnow(),
        size=sink.size,
        sha256=sink.sha256,
        input_bytes=input_bytes,
        heartbeat_at=None,
    )
    assert done is not None
    audit.record(
        "backup.created",
        plan.source,
        run_id=run_id,
        details={
            "backup_id": backup_id,
            "kind": plan.kind,
            "location": done.location,
            "size": sink.size,
            "sha256": sink.sha256,
            "encrypted": encryption is not None,
        },
    )
    return Outcome(done, round((time.perf_counter() - started) * 1000, 1))


def _beat(backup_id: str) -> None:
    store.update(backup_id, heartbeat_at=utcnow())


def resolve(ref: str, source: str | None = None) -> Backup:
    """A backup by id, unique id prefix, or `latest` of a source (newest complete, not failed)."""
    if ref == LATEST:
        if not source:
            raise BackupError("'latest' needs a source")
        for entry in store.entries(source=source):
            if entry.verify_status != "failed":
                return entry
        raise BackupError(f"no usable backup of source '{source}' in the catalog")
    found = store.get(ref)
    if found is not None:
        entry = found
    else:
        matches = store.by_prefix(ref)
        if len(matches) > 1:
            raise BackupError(f"backup id prefix '{ref}' is ambiguous")
        if not matches:
            raise BackupError(f"no backup with id '{ref}' in the catalog")
        entry = matches[0]
    if source and entry.source != source:
        raise BackupError(f"backup {entry.id} is of source '{entry.source}', not '{source}'")
    if entry.status != store.COMPLETE:
        raise BackupError(f"backup {entry.id} is {entry.status}, not complete")
    return entry


def destination_of(entry: Backup) -> Destination:
    return open_destination(DestinationSpec.model_validate(entry.destination))


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


def output_of(outcome: Outcome) -> BackupOutput:
    entry = outcome.entry
    return BackupOutput(
        backup_id=entry.id,
        source=entry.source,
        kind=entry.kind,
        location=entry.location,
        size=entry.size or 0,
        sha256=entry.sha256 or "",
        input_bytes=entry.input_bytes or 0,
        encrypted=entry.encryption is not None,
        duration_ms=outcome.duration_ms,
    )


def expect_kind(entry: Backup, *kinds: str) -> None:
    if entry.kind not in kinds:
        raise BackupError(
            f"backup {entry.id} is a {entry.kind} backup; this needs {' or '.join(kinds)}"
        )


@contextmanager
def restoring(entry: Backup, target: str, run_id: str | None) -> Iterator[dict[str, Any]]:
    """Audit a restore: `backup.restored` with the details the body filled in, or `…_failed`."""
    details: dict[str, Any] = {}
    try:
        yield details
    except BaseException as exc:
        audit.record(
            "backup.restore_failed",
            entry.source,
            run_id=run_id,
            details={"backup_id": entry.id, "target": target, "error": secrets.redact(str(exc))},
        )
        raise
    audit.record(
        "backup.restored",
        entry.source,
        run_id=run_id,
        details={"backup_id": entry.id, "kind": entry.kind, "target": target, **details},
    )
