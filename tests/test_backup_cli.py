"""The backup CLI (the real `ktlo` command) and the shipped backup runbooks, end to end."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tasks.backup import store
from tasks.backup.kinds.directory import DirectoryBackupInput, backup_directory
from tasks.backup.kinds.postgres import PostgresBackupInput, backup_postgres
from tasks.backup.model import DestinationSpec
from tasks.backup.stream import Job
from tests.backup_helpers import (
    MARIADB,
    PG_ADMIN,
    MariaDb,
    PgDb,
    make_tree,
    maria_checksums,
    maria_database,
    maria_fill,
    maria_sql,
    pg_admin,
    pg_checksums,
    pg_database,
    pg_fill,
    snapshot_tree,
    unlock,
)
from tests.conftest import Home
from tests.helpers import REPO, cli

KEY = "cli-test-key-5d1c7e2b90"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))


def test_list_verify_restore(home: Home, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "src")
    first = backup_directory(DirectoryBackupInput(path=str(tree)), Job()).entry
    second = backup_directory(DirectoryBackupInput(path=str(tree), source="other"), Job()).entry

    listed = cli("backups", "list", "--json", env=home.env)
    assert listed.returncode == 0, listed.stderr
    ids = [b["id"] for b in json.loads(listed.stdout)["backups"]]
    assert ids == [second.id, first.id]
    only = json.loads(cli("backups", "list", "--source", "other", "--json", env=home.env).stdout)
    assert [b["id"] for b in only["backups"]] == [second.id]
    table = cli("backups", "list", env=home.env)
    assert first.id in table.stdout
    assert "directory" in table.stdout

    ok = cli("backups", "verify", first.id[:20], env=home.env)
    assert ok.returncode == 0, ok.stderr
    assert "sha256 matches" in ok.stdout
    deep = cli("backups", "verify", first.id, "--deep", "--json", env=home.env)
    assert json.loads(deep.stdout)["checks"]["files"] > 10

    target = tmp_path / "restored"
    restored = cli("restore", first.id, "--to", str(target), env=home.env)
    assert restored.returncode == 0, restored.stderr
    assert snapshot_tree(target) == snapshot_tree(tree)
    again = cli("restore", first.id, "--to", str(target), env=home.env)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1
    assert "is not empty" in again.stderr
    assert "--overwrite" in again.stderr
    latest = cli(
        "restore", "latest", "--source", "other", "--to", str(target), "--overwrite", env=home.env
    )
    assert latest.returncode == 0, latest.stderr
    assert second.id in latest.stdout
    unlock(tmp_path)

    _flip(Path(first.location))
    bad = cli("backups", "verify", first.id, env=home.env)
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: ")
    assert f"backup {first.id}" in bad.stderr
    assert "corrupt" in bad.stderr
    shown = json.loads(cli("backups", "show", first.id, "--json", env=home.env).stdout)
    assert shown["verify_status"] == "failed"

    nothing = cli("restore", "nope", "--to", str(tmp_path / "x"), env=home.env)
    assert nothing.returncode == 1
    assert "no backup with id 'nope'" in nothing.stderr
    needs_source = cli("backups", "verify", "latest", env=home.env)
    assert needs_source.returncode == 1
    assert "needs" in needs_source.stderr


def test_wrong_key_is_one_clear_line(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KTLO_SECRET_CLI_KEY", KEY)
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("secret stuff")
    entry = backup_directory(
        DirectoryBackupInput(path=str(src), destination=DestinationSpec(key_secret="cli-key")),
        Job(),
    ).entry
    monkeypatch.delenv("KTLO_SECRET_CLI_KEY")
    env = {**home.env, "KTLO_SECRET_CLI_KEY": "not-the-key-31"}
    wrong = cli("restore", entry.id, "--to", str(tmp_path / "out"), env=env)
    assert wrong.returncode == 1
    assert wrong.stderr.count("\n") == 1
    assert "wrong encryption key" in wrong.stderr
    assert "not-the-key-31" not in wrong.stderr + wrong.stdout
    missing = cli("restore", entry.id, "--to", str(tmp_path / "out"), env=home.env)
    assert missing.returncode == 1
    assert "KTLO_SECRET_CLI_KEY" in missing.stderr
    right = cli(
        "restore",
        entry.id,
        "--to",
        str(tmp_path / "out"),
        env={**home.env, "KTLO_SECRET_CLI_KEY": KEY},
    )
    assert right.returncode == 0, right.stderr
    assert (tmp_path / "out" / "f").read_text() == "secret stuff"


def test_restore_postgres_from_the_cli(home: Home) -> None:
    with pg_database() as src, pg_database() as dst:
        pg_fill(src, rows=300)
        entry = backup_postgres(PostgresBackupInput(dsn=src.dsn), Job())[0].entry
        wrong_kind = cli("restore", entry.id, "--to", "/tmp/not-a-database", env=home.env)
        assert wrong_kind.returncode == 1
        assert "postgresql://" in wrong_kind.stderr
        done = cli("restore", entry.id, "--to", dst.dsn, "--json", env=home.env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["checks"]["tables"] == 2
        assert pg_checksums(dst) == pg_checksums(src)


# -- the shipped runbooks ------------------------------------------------------------------


def test_nightly_backup_then_restore_drill(home: Home, run: Any, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "data")
    scratch_db = f"ktlo_bt_drill_{uuid.uuid4().hex[:8]}"
    with pg_database() as pg, maria_database() as maria:
        pg_fill(pg, rows=1000)
        maria_fill(maria, rows=1000)
        nightly = run(
            REPO / "runbooks" / "nightly-backup.yaml",
            directory=str(tree),
            postgres_dsn=pg.dsn,
            mariadb_dsn=maria.dsn,
        )
        assert nightly.status == "succeeded", {k: s.error for k, s in nightly.steps.items()}
        for source in (
            "nightly-directory",
            "nightly-sqlite",
            "nightly-postgres",
            "nightly-mariadb",
        ):
            newest = store.latest(source, verified=True)
            assert newest is not None
            assert newest.verify_deep
        assert nightly.steps["prune"].summary == "kept 5, removed 0"
        try:
            drill = run(
                REPO / "runbooks" / "restore-drill.yaml",
                scratch_dir=str(tmp_path / "drill"),
                postgres_dsn=PG_ADMIN,
                mariadb_dsn=MARIADB,
                scratch_database=scratch_db,
            )
            assert drill.status == "succeeded", {k: s.error for k, s in drill.steps.items()}
            assert pg_checksums(PgDb(scratch_db)) == pg_checksums(pg)
            assert maria_checksums(MariaDb(scratch_db)) == maria_checksums(maria)
            assert drill.steps["sqlite"].output["checks"]["integrity_check"] == "ok"
            assert "Restore drill passed" in (drill.steps["report"].summary or "")
            assert not (tmp_path / "drill" / "ktlo-restore-drill").exists()  # cleaned up
        finally:
            pg_admin(f'DROP DATABASE IF EXISTS "{scratch_db}" WITH (FORCE)')
            maria_sql(f"DROP DATABASE IF EXISTS `{scratch_db}`")
    unlock(tmp_path)


def test_restore_drill_fails_when_backups_are_missing(home: Home, run: Any) -> None:
    drill = run(REPO / "runbooks" / "restore-drill.yaml")
    assert drill.status == "failed"
    assert "no verified backup" in (drill.steps["fresh"].error or "")
    assert drill.steps["directory"].status == "not_run"
