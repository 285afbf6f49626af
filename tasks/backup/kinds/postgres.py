"""`backup.postgres` / `restore.postgres`: `pg_dump -Fc` streamed to the destination.

The custom format is already compressed, so the dump goes through only sha256 (and
encryption) on its way to the destination. `globals: true` also stores `pg_dumpall
--globals-only` (roles, tablespaces) as a second backup of source `…/globals`.

Connection details come from a libpq DSN (URI or key=value). The password is handed to the
tools in `PGPASSWORD`, never on a command line, and is registered as a secret so it is
redacted from every message. A restore runs `pg_restore --single-transaction
--exit-on-error`, so a failed restore leaves the target database unchanged; a database it
had to create is dropped again.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from ktlo import secrets
from tasks.backup.kinds.base import BackupKind, Restored, Scratch, register, restoring
from tasks.backup.model import (
    BackupError,
    BackupInput,
    BackupOutput,
    RestoreInput,
    as_spec,
    occupied,
    require_tool,
    tool_version,
)
from tasks.backup.reader import stored
from tasks.backup.store import Backup
from tasks.backup.stream import Job, Sink, Tool, stream_output
from tasks.backup.writer import Outcome, Plan, output_of, perform_backup

USER_RELATIONS = """
SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
  AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
"""
USER_TABLES = USER_RELATIONS.replace("('r', 'p', 'v', 'm', 'S', 'f')", "('r', 'p')")


@dataclass(frozen=True)
class PgServer:
    """A libpq connection target; `password` stays out of argv and messages."""

    params: dict[str, str]

    @classmethod
    def parse(cls, dsn: str, database: str | None = None) -> PgServer:
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
        except Exception as exc:
            raise BackupError(f"invalid PostgreSQL DSN: {secrets.redact(str(exc))}") from None
        if params.get("password"):
            secrets.register(params["password"])
        if database:
            params["dbname"] = database
        params.setdefault("connect_timeout", "10")
        return cls(params)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or os.environ.get("USER", "")

    def label(self, dbname: str | None = None) -> str:
        host = self.params.get("host", "localhost")
        return f"postgres://{host}:{self.params.get('port', '5432')}/{dbname or self.dbname}"

    def conninfo(self, dbname: str | None = None) -> str:
        from psycopg.conninfo import make_conninfo

        params = {k: v for k, v in self.params.items() if k != "password"}
        params["dbname"] = dbname or self.dbname
        return make_conninfo("", **params)

    def env(self) -> dict[str, str]:
        env = secrets.child_environment()
        if self.params.get("password"):
            env["PGPASSWORD"] = self.params["password"]
        return env

    def execute(self, sql: str, *args: Any, dbname: str | None = None) -> Any:
        """Run one statement (autocommit) and return the first column of the first row."""
        import psycopg

        try:
            with psycopg.connect(
                self.conninfo(dbname), password=self.params.get("password"), autocommit=True
            ) as conn:
                cur = conn.execute(sql, args or None)
                row = cur.fetchone() if cur.description else None
                return row[0] if row else None
        except psycopg.Error as exc:
            message = secrets.redact(str(exc).strip().splitlines()[0] if str(exc) else "")
            raise BackupError(f"PostgreSQL {self.label(dbname)}: {message}") from None


class PostgresBackupInput(BackupInput):
    dsn: str = Field(description="libpq DSN, e.g. postgresql://user@host:5432/db")
    database: str | None = Field(default=None, description="database to dump (default: the DSN's)")
    globals: bool = Field(
        default=False, description="also back up roles and tablespaces (pg_dumpall --globals-only)"
    )
    options: list[str] = Field(
        default_factory=list, description="extra pg_dump options, e.g. --exclude-table=audit_*"
    )


class PostgresBackupOutput(BackupOutput):
    globals_backup_id: str | None = None


class PostgresRestoreInput(RestoreInput):
    dsn: str = Field(description="server to restore to (libpq DSN); its database is the target")
    database: str | None = Field(default=None, description="target database (default: the DSN's)")
    no_owner: bool = Field(default=False, description="pg_restore --no-owner --no-privileges")


Made = tuple[Outcome, Outcome | None]  # the backup, and its globals when asked


class Postgres(BackupKind[PostgresBackupInput, PostgresRestoreInput, Made]):
    name = "postgres"
    also_restores = ("postgres_globals",)
    backup_output = PostgresBackupOutput

    def backup(self, inputs: PostgresBackupInput, job: Job) -> Made:
        """Back up a PostgreSQL database with pg_dump -Fc (and its globals when asked)."""
        server = PgServer.parse(inputs.dsn, inputs.database)
        pg_dump = require_tool("pg_dump")
        source = inputs.source or server.label()
        plan = Plan(
            kind=self.name,
            source=source,
            extension=".pgdump",
            compression="pg_dump-custom",
            tool_versions={"pg_dump": tool_version("pg_dump")},
            details={"server": server.label(), "database": server.dbname},
        )

        def produce(sink: Sink) -> int:
            argv = [pg_dump, "--format=custom", "--no-password", *inputs.options]
            proc = Tool([*argv, f"--dbname={server.conninfo()}"], job, env=server.env())
            job.progress.start(f"pg_dump {server.label()}", None)
            count = stream_output(proc, sink, job, level=None)  # the custom format is compressed
            proc.check()
            return count

        spec = as_spec(inputs.destination)
        main = perform_backup(plan, spec, produce, job)
        if not inputs.globals:
            return main, None
        pg_dumpall = require_tool("pg_dumpall")
        globals_plan = Plan(
            kind="postgres_globals",
            source=f"{source}/globals",
            extension=".sql.zst",
            compression="zstd-3",
            tool_versions={"pg_dumpall": tool_version("pg_dumpall")},
            details={"server": server.label(), "of": main.entry.id},
        )

        def produce_globals(sink: Sink) -> int:
            argv = [pg_dumpall, "--globals-only", "--no-password", f"--dbname={server.conninfo()}"]
            proc = Tool(argv, job, env=server.env())
            count = stream_output(proc, sink, job)
            proc.check()
            return count

        return main, perform_backup(globals_plan, spec, produce_globals, job)

    def output(self, made: Made) -> BackupOutput:
        main, extra = made
        return PostgresBackupOutput(
            **output_of(main).model_dump(), globals_backup_id=extra.entry.id if extra else None
        )

    def restore_entry(self, entry: Backup, inputs: PostgresRestoreInput, job: Job) -> Restored:
        """Restore a PostgreSQL backup into a database (one transaction)."""
        server = PgServer.parse(inputs.dsn, inputs.database)
        target = server.label()
        if entry.kind == "postgres_globals":
            with restoring(entry, target, job) as done:
                done.bytes, done.sha256, errors = _load_globals(entry, server, job)
                done.checks = {"errors": errors}
            return done
        dbname = server.dbname
        maintenance = "postgres" if dbname != "postgres" else "template1"
        exists = server.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", dbname, dbname=maintenance
        )
        in_use = bool(exists) and int(server.execute(USER_RELATIONS, dbname=dbname) or 0) > 0
        if in_use and not inputs.overwrite:
            raise occupied(target)
        with restoring(entry, target, job) as done:
            if not exists:
                server.execute(f"CREATE DATABASE {_quote_ident(dbname)}", dbname=maintenance)
            try:
                done.sha256 = load(
                    entry, server, dbname, job, clean=in_use, no_owner=inputs.no_owner
                )
            except BaseException:
                if not exists:
                    drop_database(server, dbname)
                raise
            done.bytes = entry.size or 0
            done.checks = {"tables": int(server.execute(USER_TABLES, dbname=dbname) or 0)}
        return done

    def deep_check(self, entry: Backup, job: Job, scratch: Scratch) -> dict[str, Any]:
        """Restore into a scratch database (dropped afterwards), or without a server, read the
        whole archive with pg_restore into a script that is thrown away."""
        if entry.kind == "postgres_globals" or not scratch.dsn:
            return _read_through(entry, job)
        server = PgServer.parse(scratch.dsn)
        name = scratch.database_for(entry)
        server.execute(f"CREATE DATABASE {_quote_ident(name)}", dbname=server.dbname)
        try:
            load(entry, server, name, job, clean=False, no_owner=True)
            tables = int(server.execute(USER_TABLES, dbname=name) or 0)
        finally:
            drop_database(server, name)
        return {"restored_into": server.label(name), "tables": tables}

    def restore_target(self, to: str, entry_kind: str) -> dict[str, Any]:
        if not (to.startswith(("postgres://", "postgresql://")) or "=" in to):
            raise BackupError(
                f"a {entry_kind} backup restores into a database: --to postgresql://…/DB"
            )
        return {"dsn": to}


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def load(
    entry: Backup, server: PgServer, dbname: str, job: Job, *, clean: bool, no_owner: bool
) -> str:
    """Feed the stored archive to pg_restore (one transaction); returns the object's sha256."""
    pg_restore = require_tool("pg_restore")
    argv = [pg_restore, "--single-transaction", "--exit-on-error", "--no-password"]
    if clean:
        argv += ["--clean", "--if-exists"]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    with stored(entry, job) as handle:
        proc = Tool(
            [*argv, f"--dbname={server.conninfo(dbname)}"],
            job,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=server.env(),
        )
        handle.feed(
            proc,
            f"restoring backup {entry.id} into {server.label(dbname)}",
            decompress=False,
        )
        return handle.finish()


def _load_globals(entry: Backup, server: PgServer, job: Job) -> tuple[int, str, int]:
    """Apply a globals dump with psql; "already exists" errors are counted, not fatal."""
    psql = require_tool("psql")
    with stored(entry, job) as handle:
        proc = Tool(
            [psql, "--no-psqlrc", "--quiet", "--no-password", f"--dbname={server.conninfo()}"],
            job,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=server.env(),
        )
        size = handle.feed(proc, f"applying backup {entry.id}")
        errors = sum(1 for line in proc.stderr_lines(last=10_000) if "ERROR:" in line)
        return size, handle.finish(), errors


def drop_database(server: PgServer, dbname: str) -> None:
    maintenance = "postgres" if dbname != "postgres" else "template1"
    server.execute(
        f"DROP DATABASE IF EXISTS {_quote_ident(dbname)} WITH (FORCE)", dbname=maintenance
    )


def _read_through(entry: Backup, job: Job) -> dict[str, Any]:
    if entry.kind == "postgres_globals":
        with stored(entry, job) as handle:
            size = handle.decompress(lambda _b: None)
            handle.finish()
        return {"bytes": size}
    pg_restore = require_tool("pg_restore")
    with stored(entry, job) as handle:
        proc = Tool(
            [pg_restore, "--file=/dev/null"], job, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        handle.feed(proc, f"reading backup {entry.id} with pg_restore", decompress=False)
        handle.finish()
    return {"pg_restore": "read the whole archive (no scratch_dsn: not restored)"}


KIND = register(Postgres())
backup_postgres, restore_postgres = KIND.backup, KIND.restore
