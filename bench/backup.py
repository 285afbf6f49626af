"""Backup throughput (SPEC §9): directory backup and restore vs tar|zstd, PostgreSQL vs pg_dump.

- ~1 GiB of mixed files (tens of thousands of small files, a few large ones; half of the
  bytes text-like, half incompressible), generated once per run in a scratch directory.
  Backup: a one-step `backup.directory` runbook run through the runbook flow (catalog, audit,
  Prefect task run included) and the same code called directly, vs `tar -cf - DIR | zstd -3`.
  Restore: a one-step `restore.directory` runbook vs `zstd -d < X | tar -x`. Target: at least
  0.8x the baseline's throughput, i.e. a time ratio of at most 1.25.
- A PostgreSQL database of a few hundred MB built with generate_series in a throwaway database
  (dropped afterwards): a one-step `backup.postgres` runbook vs a bare `pg_dump -Fc > file`.
  Target: a time ratio of at most 1.1.

All contenders write into the same scratch directory. It is on /dev/shm when that has room
(disk writeback on a shared VM adds noise of several seconds per GiB that has nothing to do
with either contender); set KTLO_BENCH_BACKUP_DIR to measure on another filesystem.

    python -m bench.backup
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.common import Result, measure, measure_alternating, ratio_line, rounds, session

DIR_TARGET = 1.25  # time ratio for ≥ 0.8x throughput
PG_TARGET = 1.1
SMALL_FILES = 40_000
LARGE_FILES = 6
LARGE_SIZE = 112 << 20
PG_ROWS = 2_500_000
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

# bytes -> "text": a skewed 20-symbol alphabet, compresses roughly 2:1 like logs and source do
_TEXT = bytes((b"eeeettttaaaoooiinnsshhrrdlu   \n" * 9)[:256])


def _text(n: int) -> bytes:
    return os.urandom(n).translate(_TEXT)


def scratch_root() -> Path:
    chosen = os.environ.get("KTLO_BENCH_BACKUP_DIR")
    if chosen:
        return Path(chosen)
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 8 << 30:
        return shm
    return Path(tempfile.gettempdir())


def generate(root: Path) -> tuple[int, int]:
    """The mixed data set; returns (files, bytes)."""
    started = time.perf_counter()
    total = 0
    for i in range(SMALL_FILES):
        folder = root / f"dir-{i % 400:03d}" / f"sub-{i % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        size = 1024 + (i * 7919) % (15 * 1024)
        data = _text(size) if i % 3 else os.urandom(size)
        (folder / f"file-{i:05d}.dat").write_bytes(data)
        total += size
    (root / "empty-dir").mkdir()
    for i in range(LARGE_FILES):
        with open(root / f"large-{i}.bin", "wb") as f:
            for _ in range(LARGE_SIZE >> 20):
                f.write(_text(1 << 20) if i % 2 else os.urandom(1 << 20))
        total += LARGE_SIZE
    files = SMALL_FILES + LARGE_FILES
    print(
        f"data set: {files} files, {total / 2**30:.2f} GiB under {root} "
        f"(generated in {time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    return files, total


def _runbook(directory: Path, name: str, step: dict[str, Any]) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "steps": [step]}, sort_keys=False))
    return path


def _flow(path: Path) -> Callable[[], dict[str, Any]]:
    from flows.runbook import run_result, runbook_flow

    def call() -> dict[str, Any]:
        state = asyncio.run(runbook_flow(runbook=str(path), return_state=True))
        if not state.is_completed():
            raise RuntimeError(f"{path.stem} ended {state.name}: {state.message}")
        return run_result(state.result())

    return call


def _sh(command: str) -> Callable[[], None]:
    return lambda: subprocess.run(command, shell=True, check=True)


def _reset(*paths: Path) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def bench_directory(work: Path, runbooks: Path, n: int) -> dict[str, Any]:
    from tasks.backup.kinds.directory import DirectoryBackupInput, backup_directory
    from tasks.backup.stream import Job

    data, dest = work / "data", work / "dest"
    files, size = generate(data)
    base_obj = work / "baseline.tar.zst"
    backup_rb = _runbook(
        runbooks,
        "bench-backup",
        {
            "id": "b",
            "uses": "backup.directory",
            "with": {"path": str(data), "destination": str(dest)},
        },
    )

    def direct() -> None:
        backup_directory(DirectoryBackupInput(path=str(data), destination=str(dest)), Job())

    def clean_outputs() -> None:
        _reset(dest, base_obj)

    backup = measure_alternating(
        {
            "baseline": _sh(f"tar -cf - -C '{data}' . | zstd -3 -q > '{base_obj}'"),
            "ktlo": _flow(backup_rb),
            "direct": direct,
        },
        n,
        before=clean_outputs,
    )
    _sh(f"tar -cf - -C '{data}' . | zstd -3 -q > '{base_obj}'")()
    kept = backup_directory(DirectoryBackupInput(path=str(data), destination=str(dest)), Job())
    ratio_zstd = os.path.getsize(base_obj) / size
    print(
        f"objects: ktlo {kept.entry.size / 2**20:.0f} MiB, tar|zstd -3 "
        f"{os.path.getsize(base_obj) / 2**20:.0f} MiB ({ratio_zstd:.2f} of the input)"
    )
    restore_rb = _runbook(
        runbooks,
        "bench-restore",
        {
            "id": "r",
            "uses": "restore.directory",
            "with": {"backup_id": kept.entry.id, "target": str(work / "restored-ktlo")},
        },
    )
    base_target = work / "restored-baseline"

    def clean_restores() -> None:
        _reset(work / "restored-ktlo", base_target)
        base_target.mkdir()

    clean_restores()
    restore = measure_alternating(
        {
            "baseline": _sh(f"zstd -d -q < '{base_obj}' | tar -x -C '{base_target}'"),
            "ktlo": _flow(restore_rb),
        },
        n,
        before=clean_restores,
    )
    clean_restores()
    gib = size / 2**30
    print(
        f"backup samples (s): tar|zstd [{backup['baseline'].text()}]; ktlo runbook "
        f"[{backup['ktlo'].text()}]; ktlo function [{backup['direct'].text()}]"
    )
    print(
        f"restore samples (s): zstd -d|tar -x [{restore['baseline'].text()}]; ktlo runbook "
        f"[{restore['ktlo'].text()}]"
    )
    out: dict[str, Any] = {"files": files, "bytes": size}
    for label, timings in (("backup", backup), ("restore", restore)):
        base, cand = timings["baseline"].median, timings["ktlo"].median
        what = "tar|zstd -3" if label == "backup" else "zstd -d|tar -x"
        ratio_line(f"directory {label}", "ktlo runbook", cand, what, base, target=DIR_TARGET)
        print(
            f"directory {label} throughput: ktlo {gib / cand * 1024:.0f} MiB/s vs {what} "
            f"{gib / base * 1024:.0f} MiB/s → {base / cand:.2f}x (target ≥ 0.8x)"
        )
        out[f"{label}_ktlo_s"] = round(cand, 3)
        out[f"{label}_baseline_s"] = round(base, 3)
        out[f"{label}_throughput_ratio"] = round(base / cand, 3)
    direct_s = backup["direct"].median
    print(
        f"directory backup, function call without the flow: {direct_s:.2f} s "
        f"→ {backup['baseline'].median / direct_s:.2f}x of tar|zstd -3 throughput"
    )
    out["backup_function_s"] = round(direct_s, 3)
    return out


def bench_postgres(work: Path, runbooks: Path, n: int) -> dict[str, Any] | None:
    if not shutil.which("pg_dump"):
        print("postgres: pg_dump not installed; skipped")
        return None
    import psycopg

    name = f"ktlo_bench_{uuid.uuid4().hex[:8]}"
    dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        print(f"postgres: not reachable ({str(exc).strip()}); skipped")
        return None
    try:
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                f"""CREATE TABLE orders AS
                SELECT i AS id, md5(i::text) AS ref, md5((i * 7)::text) AS customer,
                       timestamptz '2024-01-01' + i * interval '1 second' AS placed,
                       (i % 1000) * 1.5 AS amount, repeat('x', i % 40) AS note
                FROM generate_series(1, {PG_ROWS}) AS i"""
            )
            conn.execute("ALTER TABLE orders ADD PRIMARY KEY (id)")
            size = conn.execute(f"SELECT pg_database_size('{name}')").fetchone()[0]
        print(
            f"postgres: {name}, {size / 2**20:.0f} MiB ({PG_ROWS} rows), built in "
            f"{time.perf_counter() - started:.1f} s"
        )
        dump = work / "baseline.pgdump"
        dest = work / "pg-dest"
        rb = _runbook(
            runbooks,
            "bench-postgres",
            {"id": "p", "uses": "backup.postgres", "with": {"dsn": dsn, "destination": str(dest)}},
        )
        t = measure_alternating(
            {
                "baseline": _sh(f"pg_dump -Fc --dbname='{dsn}' > '{dump}'"),
                "ktlo": _flow(rb),
            },
            n,
            before=lambda: _reset(dump, dest),
        )
        _reset(dump, dest)
        print(
            f"postgres samples (s): pg_dump -Fc [{t['baseline'].text()}]; ktlo [{t['ktlo'].text()}]"
        )
        ratio = ratio_line(
            "postgres backup",
            "ktlo runbook",
            t["ktlo"].median,
            "pg_dump -Fc",
            t["baseline"].median,
            target=PG_TARGET,
        )
        return {
            "pg_bytes": size,
            "pg_ktlo_s": round(t["ktlo"].median, 3),
            "pg_dump_s": round(t["baseline"].median, 3),
            "pg_ratio": round(ratio, 3),
        }
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run() -> Result:
    with session() as s:
        n = rounds(3)
        work = Path(tempfile.mkdtemp(prefix="ktlo-bench-backup-", dir=scratch_root()))
        print(f"scratch: {work} ({n} timed rounds after one warm-up, alternating order)")
        try:
            noop = _runbook(
                s.home / "runbooks",
                "bench-noop",
                {"id": "n", "uses": "log", "with": {"message": "noop"}},
            )
            fixed = measure(_flow(noop), n)
            print(
                f"fixed cost of a one-step runbook run on this server: {fixed.median:.2f} s "
                f"(part of every 'ktlo runbook' time below)"
            )
            data = bench_directory(work, s.home / "runbooks", n)
            data["one_step_runbook_s"] = round(fixed.median, 3)
            _reset(work / "data")
            data |= bench_postgres(work, s.home / "runbooks", n) or {}
        finally:
            shutil.rmtree(work, ignore_errors=True)
    headline = (
        f"backup: directory {data['backup_throughput_ratio']:.2f}x tar|zstd -3 throughput, "
        f"restore {data['restore_throughput_ratio']:.2f}x zstd -d|tar -x (target ≥ 0.8x)"
    )
    if "pg_ratio" in data:
        headline += f"; postgres {data['pg_ratio']:.2f}x pg_dump -Fc time (target ≤ {PG_TARGET:g})"
    result = Result("backup", headline, data)
    result.emit()
    return result


if __name__ == "__main__":
    run()
