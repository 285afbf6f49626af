"""Who writes a backup, and cleaning up after writers that died.

A `writing` catalog entry names its owner (host|pid|process start ticks) and heartbeats while
it runs; the next backup to the same destination tells a dead writer from a live one by that,
marks the dead one's entry `failed` and removes what it left behind.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from ktlo.owners import local_owner_alive
from ktlo.store import audit
from ktlo.store.models import utcnow
from tasks.backup import store
from tasks.backup.destinations import Destination, stored_spec
from tasks.backup.model import BackupError
from tasks.backup.store import Backup

STALE_AFTER = timedelta(minutes=10)  # a writer on another host without a heartbeat for this long


def writer_is_alive(entry: Backup) -> bool:
    alive = local_owner_alive(entry.owner)
    if alive is not None:
        return alive
    beat = store.aware(entry.heartbeat_at or entry.created_at)
    return beat is not None and utcnow() - beat < STALE_AFTER


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
