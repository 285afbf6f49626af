"""The audit trail is hash-chained: editing, deleting or truncating rows is detected and named.

The attacks of issue 10 item 2 are made with the store's credentials against a real store:
cutting the newest rows and re-pointing the head, emptying the trail, rewriting it without a
key. The head's MAC, the anchor file and the runs' own records each catch one of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from ktlo.store import audit, audit_anchor
from ktlo.store.db import engine, session
from tests.audit_helpers import anchor_lines, cut_tail, record_run, set_key, sql, store_for
from tests.audit_helpers import fill as _fill
from tests.conftest import Home
from tests.helpers import REPO, cli


@pytest.fixture(params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, home: Home, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The ktlo store on the embedded SQLite default and on the real PostgreSQL."""
    yield from store_for(request.param, monkeypatch)


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


def test_truncated_tail_with_a_forged_head_is_detected(store: str) -> None:
    """Delete the newest rows and copy the new last row's id and hash into the head."""
    _fill(8)
    cut_tail(5)
    verdict = audit.verify()
    assert not verdict.ok
    assert verdict.bad_row == 6
    assert verdict.message.startswith("audit rows 6..8 are missing: ")
    assert f"{audit_anchor.path()} line 8 anchored row 8" in verdict.message


def test_forged_head_is_detected_by_its_mac_when_keyed(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_key(monkeypatch, "k3y-only-the-operator-has")
    _fill(8)
    audit_anchor.path().unlink(
        missing_ok=True
    )  # an attacker with the machine removes the anchor too
    cut_tail(5)
    verdict = audit.verify()
    assert not verdict.ok
    assert verdict.bad_row == 5
    assert verdict.message.startswith("audit head (row 5) has a bad MAC")
    sql("UPDATE ktlo_audit_head SET mac = NULL")
    assert "has no MAC although KTLO_AUDIT_KEY is set" in audit.verify().message
    sql("UPDATE ktlo_audit_head SET mac = '" + audit.head_mac("guess", 5, "x") + "'")
    assert not audit.verify().ok


def test_emptied_trail_is_detected_by_the_anchor_and_by_the_runs(store: str) -> None:
    record_run("run-a")
    record_run("run-b")
    sql("DELETE FROM ktlo_audit", "DELETE FROM ktlo_audit_head")
    verdict = audit.verify()
    assert not verdict.ok
    assert re.match(r"audit rows 1\.\.8 are missing: ", verdict.message)
    audit_anchor.path().unlink(missing_ok=True)
    verdict = audit.verify()
    assert not verdict.ok
    assert verdict.message == (
        "run run-a (nightly) has no run.started audit row (its audit rows were deleted?)"
    )


def test_a_run_whose_audit_rows_were_cut_is_named(store: str) -> None:
    from ktlo.store import runs
    from ktlo.store.models import StepRun

    record_run("run-a")
    kept = audit.verify().rows
    runs.start_run("run-c", "nightly", params={}, trigger="manual")
    runs.record_steps([StepRun(run_id="run-c", step_id="s", uses="log", status="failed")])
    audit_anchor.path().unlink(missing_ok=True)  # no anchor and no key: only the runs can tell
    cut_tail(kept + 1)
    assert audit.verify().message.startswith(
        "run run-c (nightly) has more step records than step audit rows"
    )
    sql("DELETE FROM ktlo_step_run WHERE run_id = 'run-c'")
    kept = audit.verify().rows
    record_run("run-b", steps=3)  # run.started, 3 steps, run.finished
    audit_anchor.path().unlink(missing_ok=True)
    cut_tail(kept + 4)
    assert audit.verify().message.startswith(
        "run run-b (nightly) has finished but has no run.finished audit row"
    )
    cut_tail(kept)
    assert audit.verify().message == (
        "run run-b (nightly) has no run.started audit row (its audit rows were deleted?)"
    )


def test_chain_recomputed_without_a_key_is_caught_by_the_anchor(store: str) -> None:
    """Without a key anyone can rewrite a row and recompute every hash after it."""
    from sqlmodel import col, select

    from ktlo.store.models import AuditEvent, AuditHead

    _fill(6)
    with session() as s:
        rows = s.exec(select(AuditEvent).where(col(AuditEvent.id) >= 4).order_by("id")).all()
        prev = rows[0].prev_hash
        for event in rows:
            event.subject = "nothing happened" if event.id == 4 else event.subject
            event.prev_hash = prev
            content = json.dumps(audit._content(event), sort_keys=True, separators=(",", ":"))
            event.hash = prev = hashlib.sha256((prev + content).encode()).hexdigest()
            s.add(event)
        head = s.get(AuditHead, 1)
        assert head is not None
        head.last_hash = prev
        s.add(head)
    verdict = audit.verify()
    assert not verdict.ok
    assert verdict.bad_row == 4
    assert f"audit row 4 differs from the head anchored at {audit_anchor.path()} line 4" in (
        verdict.message
    )


def test_an_append_that_rolls_back_anchors_nothing(store: str) -> None:
    def rolled_back() -> None:
        with session() as s:
            audit.record("test.rollback", "gone", s=s)
            raise RuntimeError("boom")

    _fill(2)
    with pytest.raises(RuntimeError):
        rolled_back()
    _fill(1)
    assert [line.split()[1] for line in anchor_lines()] == ["1", "2", "3"]
    verdict = audit.verify()
    assert verdict.ok, verdict.message
    assert "3 anchored heads checked" in verdict.message


def test_the_anchor_takes_concurrent_appenders(store: str) -> None:
    """Processes and threads append at once: every head is anchored once, on a line of its own."""
    script = "from ktlo.store import audit\nfor i in range(40): audit.record('test.proc', str(i))"
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ), cwd=REPO)
        for _ in range(3)
    ]
    threads = [threading.Thread(target=_fill, args=(40,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    lines = anchor_lines()
    assert sorted(int(line.split()[1]) for line in lines) == list(range(1, 201))
    assert all(len(line.split()) == 4 for line in lines)
    verdict = audit.verify()
    assert verdict.ok, verdict.message
    assert "200 anchored heads checked" in verdict.message


def test_a_normal_run_verifies_and_a_run_with_its_rows_deleted_is_named(
    home: Home, run: object
) -> None:
    home.runbook(
        "tidy",
        """
        name: tidy
        steps:
          - id: one
            uses: log
            with: {message: first}
          - id: two
            uses: log
            with: {message: second}
        """,
    )
    result = run("tidy")  # type: ignore[operator]
    assert result.status == "succeeded"
    ok = cli("audit", "verify", env=home.env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert re.search(
        r"intact: \d+ rows; head not authenticated .*; [1-9]\d* anchored heads", ok.stdout
    )
    sql("DELETE FROM ktlo_audit", "DELETE FROM ktlo_audit_head")
    audit_anchor.path().unlink(missing_ok=True)
    bad = cli("audit", "verify", env=home.env)
    assert bad.returncode == 1
    assert f"run {result.run.id} (tidy) has no run.started audit row" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr
