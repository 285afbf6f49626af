"""Every host action goes into the audit trail: one event per host, written in one transaction."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection

from ktlo.hosts.runner import CommandResult
from ktlo.steps.context import get_step_context
from ktlo.store import audit
from ktlo.store.db import engine


def audit_hosts(
    action: str, results: Iterable[CommandResult], details: dict[str, Any] | None = None
) -> None:
    """Record `action` on each result's host, with its exit code or error (secrets masked)."""
    audit_actions([(action, r, details or {}) for r in results])


def audit_actions(
    items: Iterable[tuple[str, CommandResult, dict[str, Any]]], conn: Connection | None = None
) -> None:
    """Record several (action, result, details) events in one transaction (the caller's)."""
    ctx = get_step_context()
    run_id = ctx.run_id if ctx is not None else None
    entries = [
        audit.Entry(
            action,
            r.host,
            {
                **details,
                "exit_code": r.exit_code,
                "error": r.error,
                "duration_s": round(r.duration_s, 3),
            },
            run_id,
            None,
        )
        for action, r, details in items
    ]
    if entries and conn is not None:
        audit.record_many(entries, conn)
    elif entries:
        with engine().begin() as own:
            audit.record_many(entries, own)
