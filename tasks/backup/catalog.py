"""Finding backups in the catalog: by id, unique id prefix, or `latest` of a source.

The table and its plain queries are `store`; this module turns what an operator or a runbook
writes into one entry, with an error that says why none fits.
"""

from __future__ import annotations

from typing import Any

from tasks.backup import store
from tasks.backup.destinations import Destination, open_destination
from tasks.backup.model import LATEST, BackupError, DestinationSpec
from tasks.backup.store import Backup


def find(ref: str) -> Backup:
    """A backup by id or unique id prefix, whatever its status."""
    found = store.get(ref)
    if found is not None:
        return found
    matches = store.by_prefix(ref)
    if len(matches) > 1:
        raise BackupError(f"backup id prefix '{ref}' is ambiguous")
    if not matches:
        raise BackupError(f"no backup with id '{ref}' in the catalog")
    return matches[0]


def resolve(ref: str, source: str | None = None) -> Backup:
    """A complete backup by id, unique id prefix, or `latest` of a source (newest complete,
    not failed verification)."""
    if ref == LATEST:
        if not source:
            raise BackupError("'latest' needs a source")
        for entry in store.entries(source=source):
            if entry.verify_status != "failed":
                return entry
        raise BackupError(f"no usable backup of source '{source}' in the catalog")
    entry = find(ref)
    if source and entry.source != source:
        raise BackupError(f"backup {entry.id} is of source '{entry.source}', not '{source}'")
    if entry.status != store.COMPLETE:
        raise BackupError(f"backup {entry.id} is {entry.status}, not complete")
    return entry


def facts(entry: Backup) -> dict[str, Any]:
    """What every step output about a backup says of it."""
    return {
        "backup_id": entry.id,
        "source": entry.source,
        "kind": entry.kind,
        "size": entry.size or 0,
        "sha256": entry.sha256 or "",
    }


def destination_of(entry: Backup) -> Destination:
    return open_destination(DestinationSpec.model_validate(entry.destination))
