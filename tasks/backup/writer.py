"""Writing a backup: catalog entry, atomic write, manifest, audit.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ktlo import secrets
from ktlo.owners import owner_id
from ktlo.store import audit
from ktlo.store.models import utcnow
from tasks.backup import crypto, store
from tasks.backup.catalog import facts
from tasks.backup.destinations import open_destination, stored_spec
from tasks.backup.model import (
    BackupError,
    BackupOutput,
    DestinationSpec,
    Manifest,
    new_backup_id,
    source_slug,
)
from tasks.backup.reaper import reap
from tasks.backup.store import Backup
from tasks.backup.stream import Job, Sink


@dataclass
class Outcome:
    entry: Backup
    duration_ms: float


@dataclass
class Plan:
    """What a kind knows about the backup it is about to make."""

    kind: str
    source: str
    extension: str
    compression: str
    tool_versions: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def perform_backup(
    plan: Plan, spec: DestinationSpec, produce: Callable[[Sink], int], job: Job
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
        job.warn(note)
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
            run_id=job.run_id,
            step_id=job.step_id,
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
            run_id=job.run_id,
            details={"backup_id": backup_id, "kind": plan.kind, "error": message},
        )
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
        run_id=job.run_id,
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


def output_of(outcome: Outcome) -> BackupOutput:
    entry = outcome.entry
    return BackupOutput(
        **facts(entry),
        location=entry.location,
        input_bytes=entry.input_bytes or 0,
        encrypted=entry.encryption is not None,
        duration_ms=outcome.duration_ms,
    )
