"""Real parts for the backup tests: odd file trees, throwaway databases, an S3 server."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_service, unavailable

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
MARIADB = "mysql://root@127.0.0.1:3306"


# -- file trees ----------------------------------------------------------------------------


def make_tree(root: Path, big_bytes: int = 0) -> Path:
    """A directory with the things archivers get wrong: modes, links, odd names, empties."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "plain.txt").write_text("keep the lights on\n" * 100)
    (root / "empty-file").touch()
    (root / "empty-dir").mkdir()
    nested = root / "a" / "b" / "c"
    nested.mkdir(parents=True)
    (nested / "deep.bin").write_bytes(os.urandom(70_000))
    (root / "ünïcödé ✓ 日本語.txt").write_text("non-ASCII name\n")
    (root / "spaces and 'quotes\" $x.txt").write_text("shell-hostile name\n")
    (root / "new\nline").write_text("newline in the name\n")
    (root / "-leading-dash").write_text("dash\n")
    os.mkdir(os.fsencode(root) + b"/bytes-\xff\xfe-not-utf8")
    with open(os.fsencode(root) + b"/bytes-\xff\xfe-not-utf8/\xe9t\xe9.latin1", "wb") as f:
        f.write(b"latin-1 name\n")
    long_dir = root / ("d" * 120) / ("e" * 120)
    long_dir.mkdir(parents=True)
    (long_dir / ("f" * 200)).write_text("long path\n")
    secret = root / "private.key"
    secret.write_text("not really\n")
    secret.chmod(0o600)
    script = root / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    setuid = root / "setuid-tool"
    setuid.write_text("x")
    setuid.chmod(0o4755)
    sticky = root / "sticky-dir"
    sticky.mkdir()
    sticky.chmod(0o1777)
    locked = root / "read-only-dir"
    locked.mkdir()
    (locked / "inside.txt").write_text("inside a read-only directory\n")
    os.symlink("plain.txt", root / "link-relative")
    os.symlink("/etc/hostname", root / "link-absolute")
    os.symlink("does/not/exist", root / "link-dangling")
    os.symlink("a/b", root / "link-to-dir")
    os.link(root / "plain.txt", root / "hardlink.txt")
    os.mkfifo(root / "fifo")
    if big_bytes:
        (root / "big.bin").write_bytes(os.urandom(big_bytes))
    for i, path in enumerate(sorted(root.rglob("*"))):
        if not path.is_symlink():
            os.utime(path, ns=(1_600_000_000_123_456_789 + i, 1_600_000_000_123_456_789 + i))
    locked.chmod(0o555)
    return root


def snapshot_tree(root: Path) -> dict[bytes, tuple[Any, ...]]:
    """Everything a restore must reproduce, per path: type, mode, owner, mtime, content."""
    base = os.fsencode(root)
    out = {b".": _describe(base)}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, base)] = _describe(path)
    return out


def _describe(path: bytes) -> tuple[Any, ...]:
    st = os.lstat(path)
    content: Any = None
    if os.path.islink(path):
        content = os.readlink(path)
    elif os.path.isfile(path):
        with open(path, "rb") as f:
            content = hashlib.sha256(f.read()).hexdigest()
    mtime = None if os.path.islink(path) else st.st_mtime_ns
    return (st.st_mode & 0o170000, st.st_mode & 0o7777, st.st_uid, st.st_gid, mtime, content)


def unlock(root: Path) -> None:
    """Make a tree deletable again (read-only directories)."""
    for dirpath, _dirs, _files in os.walk(root):
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o755)


# -- throwaway databases -------------------------------------------------------------------


@dataclass
class PgDb:
    name: str

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/{self.name}"

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(statement)  # type: ignore[call-overload]
            return list(cur.fetchall()) if cur.description else []


def pg_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[call-overload]


@contextlib.contextmanager
def pg_database(prefix: str = "ktlo_bt") -> Iterator[PgDb]:
    require_service("PostgreSQL", 5432)
    if not shutil.which("pg_dump"):
        unavailable("pg_dump is not installed")
    db = PgDb(f"{prefix}_{uuid.uuid4().hex[:10]}")
    pg_admin(f'CREATE DATABASE "{db.name}"')
    try:
        yield db
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


def pg_fill(db: PgDb, rows: int = 5000) -> None:
    db.sql(
        f"""
        CREATE TABLE orders (
            id bigserial PRIMARY KEY, customer text NOT NULL, amount numeric(12, 2),
            placed timestamptz, tags text[], doc jsonb, blob bytea);
        INSERT INTO orders (customer, amount, placed, tags, doc, blob)
        SELECT 'kundé ✓ ' || i, i * 1.25, timestamptz '2024-01-01' + i * interval '1 minute',
               ARRAY['a' || i % 7, 'b'], jsonb_build_object('i', i, 'note', repeat('x', i % 50)),
               decode(md5(i::text), 'hex')
        FROM generate_series(1, {rows}) AS i;
        CREATE INDEX orders_customer ON orders (customer);
        CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100;
        CREATE TABLE empty_table (x int);
        """
    )


def pg_checksums(db: PgDb) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (table,) in db.sql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    ):
        out[table] = db.sql(
            f"SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
            f'FROM "{table}" t'
        )[0]
    out["views"] = db.sql("SELECT viewname FROM pg_views WHERE schemaname = 'public'")
    return out


@dataclass
class MariaDb:
    name: str

    @property
    def dsn(self) -> str:
        return f"{MARIADB}/{self.name}"

    def sql(self, statement: str, *args: Any) -> list[tuple[Any, ...]]:
        return maria_sql(statement, *args, database=self.name)


def maria_sql(statement: str, *args: Any, database: str | None = None) -> list[tuple[Any, ...]]:
    import pymysql

    conn = pymysql.connect(
        host="127.0.0.1", port=3306, user="root", password="", database=database, autocommit=True
    )
    try:
        with conn.cursor() as cur:
            cur.execute(statement, args or None)
            return list(cur.fetchall())
    finally:
        conn.close()


@contextlib.contextmanager
def maria_database(prefix: str = "ktlo_bt") -> Iterator[MariaDb]:
    require_service("MariaDB", 3306)
    if not (shutil.which("mariadb-dump") or shutil.which("mysqldump")):
        unavailable("mariadb-dump is not installed")
    db = MariaDb(f"{prefix}_{uuid.uuid4().hex[:10]}")
    maria_sql(f"CREATE DATABASE `{db.name}` CHARACTER SET utf8mb4")
    try:
        yield db
    finally:
        maria_sql(f"DROP DATABASE IF EXISTS `{db.name}`")


def maria_fill(db: MariaDb, rows: int = 5000) -> None:
    db.sql(
        "CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(100), amount DECIMAL(12,2), "
        "placed DATETIME(6), blob_col BLOB) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    )
    db.sql(
        "INSERT INTO orders SELECT seq, CONCAT('kundé ✓ ', seq), seq * 1.25, "
        "TIMESTAMP'2024-01-01 00:00:00' + INTERVAL seq MINUTE, UNHEX(MD5(seq)) "
        f"FROM seq_1_to_{rows}"
    )
    db.sql("CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 100")
    db.sql("CREATE TABLE empty_table (x INT) ENGINE=InnoDB")


def maria_checksums(db: MariaDb) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tables = db.sql(
        "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = %s "
        "ORDER BY 1",
        db.name,
    )
    for name, kind in tables:
        if kind == "VIEW":
            out[name] = "view"
            continue
        count = db.sql(f"SELECT count(*) FROM `{name}`")[0][0]
        checksum = db.sql(f"CHECKSUM TABLE `{name}` EXTENDED")[0][1]
        out[name] = (count, checksum)
    return out


# -- S3 ------------------------------------------------------------------------------------


@dataclass
class S3:
    endpoint: str
    bucket: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")


@contextlib.contextmanager
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """moto's real S3 API server on loopback (an HTTP server, not a mock inside boto3)."""
    pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    s3 = S3(endpoint=f"http://{host}:{port}", bucket=f"ktlo-{uuid.uuid4().hex[:8]}")
    s3.client().create_bucket(Bucket=s3.bucket)
    try:
        yield s3
    finally:
        server.stop()


# -- a tiny full filesystem ----------------------------------------------------------------


@contextlib.contextmanager
def tiny_filesystem(path: Path, size: str = "1m", readonly: bool = False) -> Iterator[Path]:
    """A real small tmpfs (needs root); skips where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
