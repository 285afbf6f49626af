"""A real ktlo store (SQLite or PostgreSQL) to tamper with, as an attacker with its credentials."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ktlo.store import audit
from ktlo.store.db import engine, reset_engines
from tests.conftest import require_service

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def store_for(kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The embedded SQLite default, or a fresh database on the real PostgreSQL."""
    from ktlo.settings import reload_settings

    if kind == "sqlite":
        yield "sqlite"
        return
    require_service("PostgreSQL", 5432)
    name = f"ktlo_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    monkeypatch.setenv("KTLO_DATABASE_URL", f"postgresql://postgres@127.0.0.1:5432/{name}")
    reset_engines()
    reload_settings()
    try:
        yield "postgres"
    finally:
        reset_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def set_key(monkeypatch: pytest.MonkeyPatch, key: str | None) -> None:
    from ktlo.settings import reload_settings

    if key is None:
        monkeypatch.delenv("KTLO_AUDIT_KEY", raising=False)
    else:
        monkeypatch.setenv("KTLO_AUDIT_KEY", key)
    reload_settings()


def fill(n: int) -> None:
    for i in range(n):
        audit.record(
            "test.event", f"thing-{i}", details={"i": i, "note": "ünïcode ✓"}, actor="tester"
        )


def sql(*statements: str) -> None:
    with engine().begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def cut_tail(keep: int) -> None:
    """Delete the rows after `keep` and point the head at row `keep` (its MAC left as it was)."""
    sql(
        f"DELETE FROM ktlo_audit WHERE id > {keep}",
        f"UPDATE ktlo_audit_head SET last_id = {keep}, "
        f"last_hash = (SELECT hash FROM ktlo_audit WHERE id = {keep})",
    )


def record_run(run_id: str, steps: int = 2, runbook: str = "nightly") -> None:
    """A finished run and its step records, written the way the engine writes them."""
    from ktlo.store import runs
    from ktlo.store.models import StepRun

    runs.start_run(run_id, runbook, params={}, trigger="manual")
    runs.record_steps(
        [
            StepRun(run_id=run_id, step_id=f"s{i}", position=i, uses="log", status="succeeded")
            for i in range(steps)
        ]
    )
    runs.finish_run(run_id, "succeeded")


def anchor_lines() -> list[str]:
    from ktlo.store import audit_anchor

    path: Path = audit_anchor.path()
    return path.read_text().splitlines() if path.exists() else []
