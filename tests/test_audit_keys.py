"""KTLO_AUDIT_KEY over the trail's life (enabling, rotating, upgrading a store); the anchor's edges."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ktlo.store import audit, audit_anchor
from ktlo.store.db import engine, reset_engines, session
from tests.audit_helpers import anchor_lines, cut_tail, fill, set_key, sql, store_for
from tests.conftest import Home
from tests.helpers import cli


@pytest.fixture(params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, home: Home, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    yield from store_for(request.param, monkeypatch)


def _rewrite_with(key: str, first: int, last: int) -> None:
    """Rewrite rows first..last and recompute their hashes with `key` (a leaked old key)."""
    from sqlmodel import col, select

    from ktlo.store.models import AuditEvent

    with session() as s:
        rows = s.exec(
            select(AuditEvent)
            .where(col(AuditEvent.id) >= first, col(AuditEvent.id) <= last)
            .order_by(col(AuditEvent.id))
        ).all()
        prev = rows[0].prev_hash
        for event in rows:
            event.subject = "nothing happened"
            event.prev_hash = prev
            payload = json.dumps(audit._content(event), sort_keys=True, separators=(",", ":"))
            prev = hmac.new(key.encode(), (prev + payload).encode(), hashlib.sha256).hexdigest()
            event.hash = prev
            s.add(event)


def test_a_rotated_key_verifies_with_the_previous_keys(
    home: Home, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    set_key(monkeypatch, "old-key")
    fill(3)
    set_key(monkeypatch, "new-key")
    assert audit.verify().bad_row == 1  # the old rows need the old key
    assert audit.verify(["old-key"]).ok  # no append yet: the head still has the old key's MAC
    fill(2)
    verdict = audit.verify(["old-key"])
    assert verdict.ok, verdict.message
    keys = tmp_path / "old-keys"
    keys.write_text("old-key\n", encoding="utf-8")
    ok = cli("audit", "verify", "--previous-keys", str(keys), env=home.env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact: 5 rows; head MAC valid" in ok.stdout
    missing = cli("audit", "verify", "--previous-keys", str(tmp_path / "nope"), env=home.env)
    assert missing.returncode == 1
    assert f"--previous-keys {tmp_path / 'nope'}: No such file or directory" in missing.stderr
    # the old key, leaked, cannot rewrite rows that rows under the new key follow (even
    # with the anchor gone)
    audit_anchor.path().unlink()
    _rewrite_with("old-key", 2, 3)
    verdict = audit.verify(["old-key"])
    assert not verdict.ok
    assert verdict.message.startswith("audit row 4: chain broken")


def test_a_key_set_on_a_store_without_one_seals_it_from_then_on(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(2)
    set_key(monkeypatch, "fresh-key")
    verdict = audit.verify()  # unkeyed rows, head without MAC: not yet sealed by the key
    assert verdict.message.startswith("audit head (row 2) has no MAC")
    fill(1)
    verdict = audit.verify()
    assert verdict.ok, verdict.message
    set_key(monkeypatch, None)  # a writer without the key appends
    fill(1)
    set_key(monkeypatch, "fresh-key")
    assert audit.verify().message == (
        "audit row 4 was written without KTLO_AUDIT_KEY after rows with a newer key"
    )


def test_a_store_from_before_head_macs_is_upgraded_and_sealed(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_key(monkeypatch, "k3y")
    fill(3)
    sql(  # the schema as it was before the head had a MAC
        "ALTER TABLE ktlo_audit_head DROP COLUMN mac",
        "DELETE FROM ktlo_schema",
        "INSERT INTO ktlo_schema (version, description, applied_at) "
        "VALUES (1, 'initial schema', CURRENT_TIMESTAMP)",
    )
    reset_engines()
    verdict = audit.verify()
    assert verdict.ok, verdict.message
    with engine().connect() as conn:
        versions = {row[0] for row in conn.exec_driver_sql("SELECT version FROM ktlo_schema")}
    assert 2 in versions
    audit_anchor.path().unlink()
    cut_tail(2)
    assert audit.verify().message.startswith("audit head (row 2) has a bad MAC")


def test_forged_or_conflicting_anchor_lines_are_named(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_key(monkeypatch, "k3y")
    fill(3)
    path = audit_anchor.path()
    tag = anchor_lines()[0].split()[0]
    good = path.read_bytes()
    with path.open("a") as f:
        f.write(f"{tag} 9 {'0' * 32} {'0' * 32}\n")
    verdict = audit.verify()
    assert not verdict.ok
    assert verdict.message == (
        f"audit anchor {path} line 4 has a bad MAC "
        "(forged line, or written with a key verify was not given)"
    )
    path.write_bytes(good + b"not an anchor line\n")
    assert audit.verify().message == f"audit anchor {path} line 4 is malformed (edited?)"
    path.write_bytes(good + b"other-store 7 " + b"1" * 32 + b" -\n\0\0\0\n")
    assert audit.verify().ok  # another store's line, and the zeros a crash may leave
    # a store restored from an older backup: row 3 exists twice with different hashes
    path.write_bytes(good)
    cut_tail(2)
    fill(1)
    assert audit.verify().message == (
        f"audit row 3 differs from the head anchored at {path} line 3 "
        "(rewritten, or the store restored from an older backup)"
    )


def test_the_anchor_setting_moves_the_file(
    home: Home, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ktlo.settings import reload_settings

    target = tmp_path / "elsewhere" / "heads.log"
    monkeypatch.setenv("KTLO_AUDIT_ANCHOR", str(target))
    reload_settings()
    fill(2)
    assert len(target.read_text().splitlines()) == 2
    assert not (home.path / "audit.anchor").exists()
    verdict = audit.verify()
    assert verdict.ok
    assert f"2 anchored heads checked ({target})" in verdict.message


def test_a_connection_lost_mid_append_raises_its_own_error_and_anchors_nothing(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The anchor's listeners must not touch a dead connection (that would reconnect)."""
    from sqlalchemy import create_engine, exc, text

    from tests.audit_helpers import PG_ADMIN

    stores = store_for("postgres", monkeypatch)
    next(stores)
    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")

        def append_and_lose_the_connection() -> None:
            with engine().begin() as conn:
                audit.record("test.doomed", "lost", s=conn)
                pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
                with admin.connect() as other:
                    other.execute(text(f"SELECT pg_terminate_backend({pid})"))
                conn.execute(text("SELECT 1"))

        fill(1)
        with pytest.raises(exc.OperationalError):
            append_and_lose_the_connection()
        admin.dispose()
        fill(1)
        assert [line.split()[1] for line in anchor_lines()] == ["1", "2"]
        assert audit.verify().ok
    finally:
        next(stores, None)
