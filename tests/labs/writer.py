"""A writer that commits numbered rows through the router and records every acknowledgement.

It runs as its own process (`python -m tests.labs.writer DSN NAME OUT INTERVAL`) so stopping
it is a kill: no cancelled commit can be mistaken for an acknowledged one (a cancelled wait
for synchronous replication still reports success, SPEC §13), and the test's own work does
not delay it. Each autocommit `INSERT` that returns is one line `id monotonic wall port` in
OUT, flushed before the next write; `port` is the node that took it (inet_server_port()), so
a test can see writes reaching an old primary. An id whose INSERT failed is never reused and
never counted: its outcome is unknown, so it is neither acknowledged nor required.
Times are `time.monotonic()` (CLOCK_MONOTONIC, shared by every process on the machine).
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from tests.labs.procs import wait_gone, wait_until

TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS lab_writes (writer text NOT NULL, id bigint NOT NULL,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (writer, id))"
)
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Ack:
    id: int
    mono: float
    wall: float
    port: int


@dataclass
class Writer:
    """Parent-side handle: start(), acks(), first_ack_after(t), lost_ids(dsn), stop()."""

    dsn: str
    name: str
    out: Path
    interval: float = 0.01
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)

    def start(self) -> Writer:
        self.out.touch()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.labs.writer",
                self.dsn,
                self.name,
                str(self.out),
                str(self.interval),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=self.out.with_suffix(".err").open("ab"),
            start_new_session=True,
        )
        self.pids.append(self.proc.pid)
        return self

    def acks(self) -> list[Ack]:
        acks = []
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) == 4:  # a line cut by a kill mid-write is not an acknowledgement
                acks.append(Ack(int(parts[0]), float(parts[1]), float(parts[2]), int(parts[3])))
        return acks

    def first_ack_after(self, t: float, port: int | None = None) -> Ack | None:
        """The first write acknowledged after monotonic time `t` (e.g. the kill), optionally
        only one taken by the node on `port` (a write in flight at the kill can still be
        acknowledged by the dying primary a few ms later)."""
        return next((a for a in self.acks() if a.mono > t and port in (None, a.port)), None)

    def wait_ack_after(self, t: float, port: int | None = None, timeout: float = 90) -> Ack:
        ack: Ack = wait_until(
            lambda: self.first_ack_after(t, port),
            timeout,
            f"writer {self.name}: a write acknowledged after t={t:.3f}",
        )
        return ack

    def lost_ids(self, dsn: str) -> list[int]:
        """Acknowledged ids missing on the node at `dsn` (the new primary)."""
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute("SELECT id FROM lab_writes WHERE writer = %s", (self.name,))
            present = {r[0] for r in rows}
        return sorted(a.id for a in self.acks() if a.id not in present)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        wait_gone(self.pids, 5)


def run(dsn: str, name: str, out: Path, interval: float) -> None:
    next_id = 0
    conn: psycopg.Connection | None = None
    with out.open("a") as sink:
        while True:
            if conn is None:
                try:
                    conn = psycopg.connect(
                        dsn,
                        autocommit=True,
                        connect_timeout=2,
                        application_name=f"lab-writer-{name}",
                    )
                except psycopg.Error:
                    time.sleep(0.02)
                    continue
            next_id += 1
            try:
                row = conn.execute(
                    "INSERT INTO lab_writes (writer, id) VALUES (%s, %s)"
                    " RETURNING inet_server_port()",
                    (name, next_id),
                ).fetchone()
            except psycopg.Error:
                conn.close()
                conn = None
                continue
            now = time.monotonic()
            port = row[0] if row else 0
            sink.write(f"{next_id} {now:.6f} {time.time():.6f} {port}\n")
            sink.flush()
            if interval:
                time.sleep(interval)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]))
