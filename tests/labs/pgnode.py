"""One lab node: its settings (kept outside the data directory), role and status query.

See tests/labs/pgcluster.py for the layout and why settings live outside the data dirs.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from tests.labs import procs

PG_BIN = Path("/usr/lib/postgresql/15/bin")
INCLUDE = "include '../node.conf'\n"
HBA = (
    "local all all trust\nlocal replication all trust\n"
    "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
)
COMMON: dict[str, str] = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "replica",
    "wal_log_hints": "on",
    "hot_standby": "on",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "max_connections": "40",
    "shared_buffers": "16MB",
    "log_line_prefix": "%m [%p] %q%a ",
    "timezone": "UTC",
    "log_timezone": "UTC",
}


class Role(StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"
    DOWN = "down"


@dataclass
class NodeStatus:
    name: str
    role: Role
    lsn: str | None = None  # current WAL LSN on a primary, replay LSN on a replica
    receive_lsn: str | None = None
    timeline: int | None = None
    error: str | None = None


@dataclass
class Node:
    name: str
    port: int
    dir: Path  # node.conf and data/ (in RAM when the lab uses /dev/shm)
    log: Path  # beside the lab's other logs, kept after stop_all()
    settings: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def conf(self) -> Path:
        return self.dir / "node.conf"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def write_conf(self) -> None:
        body = "".join(
            f"{k} = '{v.replace(chr(39), chr(39) * 2)}'\n" for k, v in self.settings.items()
        )
        self.conf.write_text(body)
        uid, gid = procs.pg_ids()
        os.chown(self.conf, uid, gid)


def sync_names(mode: bool | str, node: str, names: list[str]) -> str:
    if not mode:
        return ""
    method = "ANY" if mode is True else str(mode).upper()
    if method not in ("ANY", "FIRST"):
        raise ValueError(f"synchronous: expected True, False, 'ANY' or 'FIRST', got {mode!r}")
    return f"{method} 1 ({', '.join(n for n in names if n != node)})"


STATUS_SQL = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,
       pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
       CASE WHEN pg_is_in_recovery()
            THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                          (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END
"""
