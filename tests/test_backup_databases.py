"""PostgreSQL and MariaDB backups on the real servers: round trips with equal checksums, and
clear failures for unreachable servers, unknown roles and wrong passwords."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from ktlo.store import audit
from tasks.backup import store
from tasks.backup.kinds.mariadb import (
    MariadbBackupInput,
    MariadbRestoreInput,
    backup_mariadb,
    restore_mariadb,
)
from tasks.backup.kinds.postgres import (
    PostgresBackupInput,
    PostgresRestoreInput,
    backup_postgres,
    restore_postgres,
)
from tasks.backup.model import BackupError, DestinationSpec
from tasks.backup.stream import Job
from tasks.backup.verify import VerifyInput, verify_backup
from tests.backup_helpers import (
    MARIADB,
    PG_ADMIN,
    maria_checksums,
    maria_database,
    maria_fill,
    maria_sql,
    pg_checksums,
    pg_database,
    pg_fill,
)
from tests.conftest import Home, require_service

KEY = "db-test-key-0c9d2e7a41"

# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [False, True])
def test_postgres_round_trip(home: Home, monkeypatch: pytest.MonkeyPatch, encrypted: bool) -> None:
    monkeypatch.setenv("KTLO_SECRET_DB_KEY", KEY)
    spec = DestinationSpec(key_secret="db-key" if encrypted else None)
    with pg_database() as src, pg_database() as dst:
        pg_fill(src)
        expected = pg_checksums(src)
        main, extra = backup_postgres(
            PostgresBackupInput(dsn=src.dsn, destination=spec, globals=True), Job()
        )
        assert extra is not None
        assert extra.entry.source == f"{main.entry.source}/globals"
        assert main.entry.source == f"postgres://127.0.0.1:5432/{src.name}"
        assert main.entry.compression == "pg_dump-custom"
        assert "pg_dump" in main.entry.tool_versions["pg_dump"]
        out = restore_postgres(PostgresRestoreInput(backup_id=main.entry.id, dsn=dst.dsn), Job())
        assert out.checks["tables"] == 2
        assert pg_checksums(dst) == expected
        # the target is not empty now: a second restore needs overwrite
        with pytest.raises(BackupError, match="not empty"):
            restore_postgres(PostgresRestoreInput(backup_id=main.entry.id, dsn=dst.dsn), Job())
        dst.sql("DELETE FROM orders WHERE id % 2 = 0")
        restore_postgres(
            PostgresRestoreInput(backup_id=main.entry.id, dsn=dst.dsn, overwrite=True), Job()
        )
        assert pg_checksums(dst) == expected
        # globals re-applied to the same server: existing roles are reported, not fatal
        globals_out = restore_postgres(
            PostgresRestoreInput(backup_id=extra.entry.id, dsn=PG_ADMIN), Job()
        )
        assert globals_out.bytes > 0


def test_postgres_restore_creates_the_database_and_deep_verify_uses_a_scratch_one(
    home: Home,
) -> None:
    with pg_database() as src:
        pg_fill(src, rows=500)
        entry = backup_postgres(PostgresBackupInput(dsn=src.dsn), Job())[0].entry
        deep = verify_backup(
            VerifyInput(backup_id=entry.id, deep=True, scratch_dsn=PG_ADMIN), Job()
        )
        assert deep.checks["tables"] == 2
        scratch = deep.checks["restored_into"].rsplit("/", 1)[1]
        with pg_database() as probe:
            assert probe.sql(f"SELECT count(*) FROM pg_database WHERE datname = '{scratch}'") == [
                (0,)
            ]
        new_name = f"ktlo_bt_new_{uuid.uuid4().hex[:8]}"
        try:
            restore_postgres(
                PostgresRestoreInput(backup_id=entry.id, dsn=PG_ADMIN, database=new_name), Job()
            )
            from tests.backup_helpers import PgDb

            assert pg_checksums(PgDb(new_name)) == pg_checksums(src)
        finally:
            from tests.backup_helpers import pg_admin

            pg_admin(f'DROP DATABASE IF EXISTS "{new_name}" WITH (FORCE)')
        assert verify_backup(VerifyInput(backup_id=entry.id, deep=True), Job()).checks


def test_postgres_unreachable_and_unknown_role(home: Home, run: Any) -> None:
    require_service("PostgreSQL", 5432)
    path = home.runbook(
        "pg-fail",
        """
        name: pg-fail
        steps:
          - id: down
            uses: backup.postgres
            on_failure: continue
            with: {dsn: "postgresql://postgres:pw-Hq83-notused@127.0.0.1:1/postgres"}
          - id: nobody
            uses: backup.postgres
            on_failure: continue
            with: {dsn: "postgresql://no_such_role_ktlo@127.0.0.1:5432/postgres"}
          - id: nodb
            uses: backup.postgres
            with: {dsn: "postgresql://postgres@127.0.0.1:5432/no_such_database_ktlo"}
        """,
    )
    result = run(path)
    assert result.status == "failed"
    down = result.steps["down"].error or ""
    assert "Connection refused" in down or "connection" in down
    assert "pw-Hq83-notused" not in down
    assert 'role "no_such_role_ktlo" does not exist' in (result.steps["nobody"].error or "")
    assert "no_such_database_ktlo" in (result.steps["nodb"].error or "")
    assert store.entries() == []
    failed = store.entries(statuses=("failed",))
    assert len(failed) == 3
    assert all("pw-Hq83-notused" not in str(e) for e in audit.events())


# -- MariaDB -------------------------------------------------------------------------------


@pytest.mark.parametrize("encrypted", [False, True])
def test_mariadb_round_trip(home: Home, monkeypatch: pytest.MonkeyPatch, encrypted: bool) -> None:
    monkeypatch.setenv("KTLO_SECRET_DB_KEY", KEY)
    spec = DestinationSpec(key_secret="db-key" if encrypted else None)
    with maria_database() as src, maria_database() as dst:
        maria_fill(src)
        expected = maria_checksums(src)
        entry = backup_mariadb(MariadbBackupInput(dsn=src.dsn, destination=spec), Job()).entry
        assert entry.source == f"mariadb://127.0.0.1:3306/{src.name}"
        dst.sql("CREATE TABLE leftover (x INT)")
        with pytest.raises(BackupError, match="not empty"):
            restore_mariadb(MariadbRestoreInput(backup_id=entry.id, dsn=dst.dsn), Job())
        out = restore_mariadb(
            MariadbRestoreInput(backup_id=entry.id, dsn=dst.dsn, overwrite=True), Job()
        )
        assert out.checks["tables"] == 3
        assert maria_checksums(dst) == expected
        deep = verify_backup(VerifyInput(backup_id=entry.id, deep=True, scratch_dsn=MARIADB), Job())
        assert deep.checks["tables"] == 3
        assert verify_backup(VerifyInput(backup_id=entry.id, deep=True), Job()).checks["complete"]


def test_mariadb_restore_into_a_new_database(home: Home) -> None:
    with maria_database() as src:
        maria_fill(src, rows=100)
        entry = backup_mariadb(
            MariadbBackupInput(host="127.0.0.1", port=3306, user="root", database=src.name), Job()
        ).entry
        new_name = f"ktlo_bt_new_{uuid.uuid4().hex[:8]}"
        try:
            restore_mariadb(
                MariadbRestoreInput(
                    backup_id="latest", source=entry.source, dsn=MARIADB, database=new_name
                ),
                Job(),
            )
            from tests.backup_helpers import MariaDb

            assert maria_checksums(MariaDb(new_name)) == maria_checksums(src)
        finally:
            maria_sql(f"DROP DATABASE IF EXISTS `{new_name}`")


def test_mariadb_wrong_password_and_unreachable(home: Home, run: Any, tmp_path: Path) -> None:
    with maria_database() as db:
        user = f"ktlo_u_{uuid.uuid4().hex[:6]}"
        maria_sql(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'pw-Right-5521'")
        maria_sql(f"GRANT ALL ON `{db.name}`.* TO '{user}'@'127.0.0.1'")
        try:
            path = home.runbook(
                "maria-fail",
                f"""
                name: maria-fail
                steps:
                  - id: wrong
                    uses: backup.mariadb
                    on_failure: continue
                    with: {{host: 127.0.0.1, user: {user}, password: pw-Wrong-7731, database: {db.name}}}
                  - id: down
                    uses: backup.mariadb
                    on_failure: continue
                    with: {{dsn: "mysql://root@127.0.0.1:1/{db.name}"}}
                  - id: right
                    uses: backup.mariadb
                    with: {{host: 127.0.0.1, user: {user}, password: pw-Right-5521, database: {db.name}}}
                """,
            )
            result = run(path)
        finally:
            maria_sql(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
    assert result.status == "succeeded_with_errors"
    wrong = result.steps["wrong"].error or ""
    assert "Access denied" in wrong
    assert "pw-Wrong-7731" not in wrong
    assert "Can't connect" in (result.steps["down"].error or "")
    good = result.steps["right"].output["backup_id"]
    assert [e.id for e in store.entries()] == [good]
    for event in audit.events():
        assert "pw-Wrong-7731" not in str(event.details)
        assert "pw-Right-5521" not in str(event.details)
