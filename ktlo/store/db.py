"""One engine per database URL; the schema is created and migrated on first use.

A store records which code already found all its tables and migrations there (a stamp per
code fingerprint, valid for one schema version), so a process of the same code skips
importing every domain's tables: a fifth of a second at every `ktlo` start.

SQLite (the embedded default) runs in WAL mode with a busy timeout and `BEGIN IMMEDIATE`
transactions, so concurrent writers queue instead of failing with "database is locked";
within a process they queue on a lock, which hands over faster than SQLite's polling.
PostgreSQL URLs are routed to psycopg 3.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, SQLModel, create_engine

from ktlo.errors import KtloError
from ktlo.settings import get_settings

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
WRITER_LOCK = "ktlo_writer"
WRITER_WAIT_S = 30  # then go ahead anyway: SQLite's own busy timeout still applies
_writers: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()
_checkpointed: weakref.WeakSet[Engine] = weakref.WeakSet()
CHECKPOINT_EVERY_S = 0.5


def writer_lock(eng: Engine) -> threading.Lock | None:
    """The lock this process's writers of a SQLite store take turns through (None elsewhere)."""
    return _writers.get(eng)


# Ordered schema migrations after the initial `create_all`: (version, description, fn).
Migration = tuple[int, str, Callable[[Connection], None]]


def add_column(table: str, column: str) -> Callable[[Connection], None]:
    """A migration adding a nullable column declared on a model to a store made before it
    (a table that `create_all` just made has it already)."""

    def migrate(conn: Connection) -> None:
        if column in {c["name"] for c in inspect(conn).get_columns(table)}:
            return
        declared = SQLModel.metadata.tables[table].c[column]
        kind = declared.type.compile(dialect=conn.dialect)
        conn.execute(text(f'ALTER TABLE {table} ADD COLUMN "{column}" {kind}'))

    return migrate


# Each table module appends its own, with the next free version number.
MIGRATIONS: list[Migration] = []


def normalise_url(url: str) -> str:
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below take effect
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        if engine in _checkpointed:
            cur.execute("PRAGMA wal_autocheckpoint=0")
        cur.close()

    # Writers of this process take turns through a lock before `BEGIN IMMEDIATE`. SQLite
    # itself serialises writers, but a writer that finds the database locked sleeps and
    # polls (up to 100 ms a time), so under a burst some lose the race again and again: a
    # webhook acknowledgement then took seconds. Waiting on a lock hands over at once.
    # Correctness still rests on SQLite's lock (other processes share the file).
    writer = threading.Lock()
    _writers[engine] = writer

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if writer.acquire(timeout=WRITER_WAIT_S):
            conn.info[WRITER_LOCK] = True
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            _release(conn)
            raise

    def _release(conn: Connection) -> None:
        if conn.info.pop(WRITER_LOCK, False):
            writer.release()

    event.listen(engine, "commit", _release)
    event.listen(engine, "rollback", _release)


def checkpoint_in_background(eng: Engine) -> None:
    """Take this process's WAL checkpoints of a SQLite store off its committing threads.

    SQLite checkpoints in whichever commit takes the WAL past 1,000 pages; that commit then
    copies the WAL into the database and fsyncs it (5-6 ms here, against 0.03 ms for a
    plain commit), and every acknowledgement batched with it waits. Here this process's
    connections do not checkpoint, and a thread runs a PASSIVE checkpoint (which never
    blocks writers or readers) every half second. Other processes keep SQLite's default.
    """
    database = eng.url.database
    if eng.dialect.name != "sqlite" or not database or database == ":memory:":
        return
    with _lock:
        if eng in _checkpointed:
            return
        _checkpointed.add(eng)
    eng.dispose()  # pooled connections reconnect without auto-checkpoints
    ref = weakref.ref(eng)
    threading.Thread(
        target=_checkpoint_forever, args=(ref, database), name="ktlo-checkpoint", daemon=True
    ).start()


def _checkpoint_forever(ref: weakref.ref[Engine], database: str) -> None:
    import sqlite3

    conn = sqlite3.connect(database, timeout=30, isolation_level=None)
    try:
        while True:
            time.sleep(CHECKPOINT_EVERY_S)
            eng = ref()
            if eng is None or eng not in _engines.values():
                return  # the engine was reset or collected: its own pool checkpoints again
            del eng
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                continue  # busy or briefly unavailable: the next round tries again
    finally:
        conn.close()


def engine(url: str | None = None) -> Engine:
    url = normalise_url(url or get_settings().store_url)
    with _lock:
        existing = _engines.get(url)
        if existing is not None:
            return existing
        if url.startswith("sqlite"):
            db_path = url.split("///", 1)[-1]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            _sqlite_setup(eng)
        else:
            eng = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        try:
            _migrate(eng)
        except Exception as exc:
            eng.dispose()
            raise KtloError(
                f"ktlo store {_safe_url(url)} is not usable: {_first_line(exc)}"
            ) from None
        _engines[url] = eng
        return eng


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable URL)"


TABLES_ENTRY_POINT_GROUP = "ktlo.tables"


def import_table_modules() -> None:
    """Import the table modules that the core and each domain register (pyproject's
    `ktlo.tables` entry points), so `create_all` sees every table without the store
    knowing the domains (and what registers beside its tables is registered)."""
    import importlib
    from importlib.metadata import entry_points

    for ep in entry_points(group=TABLES_ENTRY_POINT_GROUP):
        importlib.import_module(ep.value.split(":")[0])


def _code_fingerprint() -> str:
    """A digest of the code that decides the schema, taken without importing it.

    The `ktlo.tables` entry points, and the path, size and modification time of every
    Python file under their top-level packages: what Python itself trusts for its bytecode
    cache. An edit, an upgrade or a new domain changes it (and costs one full migration).
    """
    import hashlib
    import importlib.util
    import os
    from importlib.metadata import entry_points

    digest = hashlib.sha256()
    roots: set[str] = set()
    for ep in sorted(entry_points(group=TABLES_ENTRY_POINT_GROUP), key=lambda e: e.name):
        digest.update(f"{ep.name}={ep.value}\n".encode())
        spec = importlib.util.find_spec(ep.value.split(":")[0].split(".")[0])  # imports nothing
        if spec is not None:
            roots.update(spec.submodule_search_locations or [spec.origin or ""])
    files: list[str] = []
    for root in sorted(roots):
        if not os.path.isdir(root):
            files.append(root)
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            files.extend(os.path.join(folder, n) for n in names if n.endswith(".py"))
    for path in sorted(files):
        st = os.stat(path)
        digest.update(f"{path} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _stamped(eng: Engine, fingerprint: str) -> bool:
    """Whether this code found every table and migration in this store at its current version."""
    try:
        with eng.connect() as conn:
            row = conn.execute(
                text(
                    "SELECT 1 FROM ktlo_schema_stamp WHERE fingerprint = :f "
                    "AND version = (SELECT MAX(version) FROM ktlo_schema)"
                ),
                {"f": fingerprint},
            ).first()
    except DBAPIError:  # a new store, or one from before stamps: migrate it
        return False
    return row is not None


def _migrate(eng: Engine) -> None:
    fingerprint = _code_fingerprint()
    if _stamped(eng, fingerprint):
        return
    import_table_modules()

    with eng.begin() as conn:
        if eng.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7352001)"))  # one migrator at a time
        SQLModel.metadata.create_all(conn)
        _apply_migrations(conn)
        _stamp(conn, fingerprint)


def _apply_migrations(conn: Connection) -> None:
    from ktlo.store.models import utcnow

    current = conn.execute(text("SELECT MAX(version) FROM ktlo_schema")).scalar() or 0
    if current == 0:
        latest = max((m[0] for m in MIGRATIONS), default=1)
        conn.execute(
            text("INSERT INTO ktlo_schema (version, description, applied_at) VALUES (:v, :d, :at)"),
            {"v": latest, "d": "initial schema", "at": utcnow()},
        )
        return
    for version, description, fn in sorted(MIGRATIONS, key=lambda m: m[0]):
        if version > current:
            fn(conn)
            conn.execute(
                text(
                    "INSERT INTO ktlo_schema (version, description, applied_at) VALUES (:v, :d, :at)"
                ),
                {"v": version, "d": description, "at": utcnow()},
            )


def _stamp(conn: Connection, fingerprint: str) -> None:
    """Record that this code's tables and migrations are all here (stamps of other versions go)."""
    from ktlo.store.models import utcnow

    version = conn.execute(text("SELECT MAX(version) FROM ktlo_schema")).scalar()
    conn.execute(
        text("DELETE FROM ktlo_schema_stamp WHERE fingerprint = :f OR version <> :v"),
        {"f": fingerprint, "v": version},
    )
    conn.execute(
        text(
            "INSERT INTO ktlo_schema_stamp (fingerprint, version, stamped_at) VALUES (:f, :v, :at)"
        ),
        {"f": fingerprint, "v": version, "at": utcnow()},
    )


def table_names(eng: Engine) -> list[str]:
    return inspect(eng).get_table_names()


@contextmanager
def session(url: str | None = None) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error."""
    with Session(engine(url), expire_on_commit=False) as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise


def reset_engines() -> None:
    with _lock:
        for eng in _engines.values():
            eng.dispose()
        _engines.clear()
