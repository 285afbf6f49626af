"""`backup.mariadb` / `restore.mariadb`: `mariadb-dump --single-transaction`, zstd-compressed.

`--single-transaction` gives a consistent snapshot of InnoDB tables without locking them. The
dump has no `CREATE DATABASE`/`USE`, so it restores into any database name. Credentials go to
the tools in a private `--defaults-extra-file` (mode 0600, deleted afterwards), never on a
command line. A restore into an existing non-empty database needs `overwrite: true`, which
drops and recreates it first; a database the restore created is dropped again if it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from pydantic import Field, field_validator

from ktlo import secrets
from ktlo.steps.registry import StepInput
from tasks.backup.kinds.base import BackupKind, Restored, Scratch, register, restoring
from tasks.backup.model import (
    BackupError,
    BackupInput,
    RestoreInput,
    as_spec,
    occupied,
    tool_version,
)
from tasks.backup.reader import stored
from tasks.backup.store import Backup
from tasks.backup.stream import Job, Sink, Tool, stream_output
from tasks.backup.writer import Outcome, Plan, perform_backup

DUMP_OPTIONS = (
    "--single-transaction",
    "--quick",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--default-character-set=utf8mb4",
)
COMPLETED = b"-- Dump completed"


def _tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise BackupError(f"'{names[0]}' is not installed (or not on PATH)")


class Connection(StepInput):
    """How to reach a MariaDB/MySQL server: a DSN, or host/port/user/password."""

    dsn: str | None = Field(default=None, description="mysql://user:password@host:port/database")
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None
    socket: str | None = None
    database: str | None = None

    @field_validator("dsn")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        if value and urlparse(value).scheme not in ("mysql", "mariadb"):
            raise ValueError("dsn must be a mysql:// or mariadb:// URL")
        return value


@dataclass(frozen=True)
class MariaServer:
    host: str
    port: int
    user: str
    password: str
    socket: str | None
    database: str

    @classmethod
    def of(cls, conn: Connection, database: str | None = None) -> MariaServer:
        parsed = urlparse(conn.dsn) if conn.dsn else None
        password = conn.password
        if password is None and parsed is not None and parsed.password is not None:
            password = unquote(parsed.password)
        if password:
            secrets.register(password)
        db = database or conn.database or (unquote(parsed.path.lstrip("/")) if parsed else "")
        return cls(
            host=conn.host or (parsed.hostname if parsed else None) or "127.0.0.1",
            port=conn.port or (parsed.port if parsed else None) or 3306,
            user=conn.user or (unquote(parsed.username) if parsed and parsed.username else "root"),
            password=password or "",
            socket=conn.socket,
            database=db,
        )

    def label(self, database: str | None = None) -> str:
        return f"mariadb://{self.host}:{self.port}/{database or self.database}"

    @contextlib.contextmanager
    def options_file(self) -> Iterator[str]:
        """A private option file with the credentials, for the command-line tools."""

        def quoted(value: str) -> str:
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = ["[client]", f"host={self.host}", f"port={self.port}", f"user={quoted(self.user)}"]
        lines.append(f"password={quoted(self.password)}")
        if self.socket:
            lines.append(f"socket={self.socket}")
        with tempfile.NamedTemporaryFile("w", prefix="ktlo-my-", suffix=".cnf") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            yield f.name

    def execute(self, sql: str, *args: Any) -> Any:
        import pymysql

        try:
            conn = pymysql.connect(
                host=self.host,
                port=self.port,
                user=self.user,
                password=self.password,
                unix_socket=self.socket,
                connect_timeout=10,
                autocommit=True,
            )
        except pymysql.Error as exc:
            raise BackupError(f"MariaDB {self.label('')}: {_pymysql_message(exc)}") from None
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args or None)
                row = cur.fetchone()
                return row[0] if row else None
        except pymysql.Error as exc:
            raise BackupError(f"MariaDB {self.label('')}: {_pymysql_message(exc)}") from None
        finally:
            conn.close()


def _pymysql_message(exc: Exception) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    text = str(args[1]) if len(args) > 1 else str(exc)
    return secrets.redact(text)


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class MariadbBackupInput(BackupInput, Connection):
    level: int = Field(default=3, ge=1, le=19, description="zstd compression level")
    options: list[str] = Field(default_factory=list, description="extra mariadb-dump options")


class MariadbRestoreInput(RestoreInput, Connection):
    """`database` (or the DSN's) is the target database."""


class Mariadb(BackupKind[MariadbBackupInput, MariadbRestoreInput, Outcome]):
    name = "mariadb"

    def backup(self, inputs: MariadbBackupInput, job: Job) -> Outcome:
        """Back up a MariaDB/MySQL database with mariadb-dump --single-transaction."""
        server = MariaServer.of(inputs)
        if not server.database:
            raise BackupError("backup.mariadb needs a database (in 'database' or the DSN)")
        dump = _tool("mariadb-dump", "mysqldump")
        plan = Plan(
            kind=self.name,
            source=inputs.source or server.label(),
            extension=".sql.zst",
            compression=f"zstd-{inputs.level}",
            tool_versions={"mariadb-dump": tool_version(os.path.basename(dump))},
            details={"server": server.label(""), "database": server.database},
        )

        def produce(sink: Sink) -> int:
            with server.options_file() as options:
                argv = [dump, f"--defaults-extra-file={options}", *DUMP_OPTIONS, *inputs.options]
                proc = Tool([*argv, server.database], job)
                job.progress.start(f"mariadb-dump {server.label()}", None)
                count = stream_output(proc, sink, job, level=inputs.level, threads=-1)
                proc.check()
            return count

        return perform_backup(plan, as_spec(inputs.destination), produce, job)

    def restore_entry(self, entry: Backup, inputs: MariadbRestoreInput, job: Job) -> Restored:
        """Restore a MariaDB backup into a database (dropped and recreated with overwrite)."""
        server = MariaServer.of(inputs)
        if not server.database:
            raise BackupError("restore.mariadb needs a target database (in 'database' or the DSN)")
        db = server.database
        exists = server.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", db
        )
        if exists and _tables(server, db) and not inputs.overwrite:
            raise occupied(server.label())
        with restoring(entry, server.label(), job) as done:
            if exists:
                server.execute(f"DROP DATABASE {_ident(db)}")
            server.execute(f"CREATE DATABASE {_ident(db)} CHARACTER SET utf8mb4")
            try:
                done.bytes, done.sha256 = load(entry, server, db, job)
            except BaseException:
                server.execute(f"DROP DATABASE IF EXISTS {_ident(db)}")
                if exists:
                    server.execute(f"CREATE DATABASE {_ident(db)} CHARACTER SET utf8mb4")
                raise
            done.checks = {"tables": _tables(server, db)}
        return done

    def deep_check(self, entry: Backup, job: Job, scratch: Scratch) -> dict[str, Any]:
        """Load into a scratch database (dropped afterwards); without a server, check that the
        dump decompresses completely and ends with mariadb-dump's completion marker."""
        if not scratch.dsn:
            return _read_through(entry, job)
        server = MariaServer.of(Connection(dsn=scratch.dsn))
        name = scratch.database_for(entry)
        server.execute(f"CREATE DATABASE {_ident(name)} CHARACTER SET utf8mb4")
        try:
            size, _ = load(entry, server, name, job)
            tables = _tables(server, name)
        finally:
            server.execute(f"DROP DATABASE IF EXISTS {_ident(name)}")
        return {"restored_into": server.label(name), "bytes": size, "tables": tables}

    def restore_target(self, to: str, entry_kind: str) -> dict[str, Any]:
        if not to.startswith(("mysql://", "mariadb://")):
            raise BackupError(f"a {entry_kind} backup restores into a database: --to mysql://…/DB")
        return {"dsn": to}


def load(entry: Backup, server: MariaServer, database: str, job: Job) -> tuple[int, str]:
    client = _tool("mariadb", "mysql")
    with stored(entry, job) as handle, server.options_file() as options:
        argv = [client, f"--defaults-extra-file={options}", "--binary-mode", "--batch"]
        proc = Tool(
            [*argv, f"--database={database}"],
            job,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        size = handle.feed(proc, f"restoring backup {entry.id} into {server.label(database)}")
        return size, handle.finish()


def _tables(server: MariaServer, database: str) -> int:
    sql = "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s"
    return int(server.execute(sql, database) or 0)


def _read_through(entry: Backup, job: Job) -> dict[str, Any]:
    tail = bytearray()

    def keep_tail(data: bytes) -> None:
        tail.extend(data[-256:])
        del tail[:-256]

    with stored(entry, job) as handle:
        size = handle.decompress(keep_tail)
        handle.finish()
    if COMPLETED not in tail:
        raise BackupError(
            f"backup {entry.id} ({entry.source}): the dump is incomplete (no '-- Dump completed')"
        )
    return {"bytes": size, "complete": True}


KIND = register(Mariadb())
backup_mariadb, restore_mariadb = KIND.backup, KIND.restore
