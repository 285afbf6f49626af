"""The audit trail is hash-chained: editing or deleting any row is detected and named."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ktlo import audit
from ktlo.store.db import engine, reset_engines
from tests.conftest import Home, require_service
from tests.helpers import cli

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, home: Home, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The ktlo store on the embedded SQLite default and on the real PostgreSQL."""
    from ktlo.settings import reload_settings

    if request.param == "sqlite":
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


def _fill(n: int) -> None:
    for i in range(n):
        audit.record(
            "test.event", f"thing-{i}", details={"i": i, "note": "ünïcode ✓"}, actor="tester"
        )


def test_untouched_trail_verifies(store: str) -> None:
    _fill(5)
    verdict = audit.verify()
    assert verdict.ok, verdict.message
    assert verdict.rows == 5


def test_edited_row_is_named(store: str) -> None:
    _fill(5)
    with engine().begin() as conn:
        conn.execute(text("UPDATE ktlo_audit SET subject = 'forged' WHERE id = 3"))
    verdict = audit.verify()
    assert not verdict.ok
    assert verdict.bad_row == 3
    assert "audit row 3 was modified" in verdict.message


def test_edited_details_are_detected(store: str) -> None:
    _fill(3)
    with engine().begin() as conn:
        conn.execute(text("""UPDATE ktlo_audit SET details = '{"i": 99}' WHERE id = 2"""))
    assert audit.verify().bad_row == 2


def test_deleted_row_is_named(store: str) -> None:
    _fill(5)
    with engine().begin() as conn:
        conn.execute(text("DELETE FROM ktlo_audit WHERE id = 2"))
    verdict = audit.verify()
    assert not verdict.ok
    assert verdict.bad_row == 2
    assert "missing" in verdict.message


def test_deleted_newest_row_is_detected(store: str) -> None:
    _fill(4)
    with engine().begin() as conn:
        conn.execute(text("DELETE FROM ktlo_audit WHERE id = 4"))
    verdict = audit.verify()
    assert not verdict.ok
    assert "4" in verdict.message


def test_rewritten_chain_without_the_key_is_detected(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ktlo.settings import reload_settings

    monkeypatch.setenv("KTLO_AUDIT_KEY", "k3y-only-the-operator-has")
    reload_settings()
    _fill(3)
    assert audit.verify().ok
    monkeypatch.delenv("KTLO_AUDIT_KEY")
    reload_settings()
    assert not audit.verify().ok  # plain SHA-256 cannot reproduce the keyed chain


def test_concurrent_appends_keep_the_chain(store: str) -> None:
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(15):
                audit.record("test.concurrent", f"w{k}-{i}", actor=f"worker-{k}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    verdict = audit.verify()
    assert verdict.ok, verdict.message
    assert verdict.rows == 90


def test_cli_audit_verify_exit_codes(home: Home) -> None:
    _fill(3)
    ok = cli("audit", "verify", env=home.env)
    assert ok.returncode == 0, ok.stderr
    assert "intact: 3 rows" in ok.stdout
    with engine().begin() as conn:
        conn.execute(text("UPDATE ktlo_audit SET actor = 'mallory' WHERE id = 2"))
    bad = cli("audit", "verify", env=home.env)
    assert bad.returncode == 1
    assert "audit row 2 was modified" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr


def test_sqlite_writers_hand_the_process_lock_back_on_every_path(home: Home) -> None:
    from sqlmodel import select

    from ktlo.store.db import session, writer_lock
    from ktlo.store.models import AuditEvent

    eng = engine()
    writer = writer_lock(eng)
    assert writer is not None
    audit.record("test.commit", "core")  # Core transaction, committed
    assert not writer.locked()

    def orm_failure() -> None:
        with session() as s:
            s.exec(select(AuditEvent)).all()
            audit.record("test.rollback", "orm", s=s)
            raise RuntimeError("boom")

    def core_failure() -> None:
        with eng.begin() as conn:
            conn.execute(text("SELECT 1"))
            raise RuntimeError("boom")

    for failing in (orm_failure, core_failure):  # rolled back
        with pytest.raises(RuntimeError):
            failing()
        assert not writer.locked()
    with eng.connect() as conn:  # begun, then closed without commit or rollback
        conn.begin()
    assert not writer.locked()
    assert audit.verify().rows == 1


def test_background_checkpoints_keep_commits_free_of_them(home: Home) -> None:
    import time

    from ktlo.store import db

    eng = engine()
    database = Path(str(eng.url.database))
    db.checkpoint_in_background(eng)
    threads = [t for t in threading.enumerate() if t.name == "ktlo-checkpoint"]
    db.checkpoint_in_background(eng)  # idempotent: one thread per engine
    assert [t for t in threading.enumerate() if t.name == "ktlo-checkpoint"] == threads
    with eng.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
    size_before = database.stat().st_size
    # ~2,500 pages: past SQLite's 1,000-page auto-checkpoint, which these connections skip,
    # so only the background thread can copy them into the database file
    for n in range(50):
        audit.record("test.bulk", f"row-{n}", details={"blob": "x" * 200_000})
    deadline = time.monotonic() + 10
    while database.stat().st_size <= size_before + 5_000_000:
        assert time.monotonic() < deadline, "no background checkpoint reached the database"
        time.sleep(0.1)
    assert audit.verify().rows == 50
    db.reset_engines()  # the thread notices and stops
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in threads):
        assert time.monotonic() < deadline, "the checkpoint thread outlived its engine"
        time.sleep(0.1)
