"""`disk`: space and inodes used on the file system holding a path.

`statvfs` can hang on a dead network mount, so it runs on the sweep's thread pool.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Literal

from tasks.health.checks.base import CheckBase, Facts
from tasks.health.facts import elapsed_ms

if TYPE_CHECKING:
    from tasks.health.prober import Prober


class DiskCheck(CheckBase):
    type: Literal["disk"]
    path: str = "/"

    PLACEHOLDERS = {
        "used_percent": "number",
        "free_bytes": "number",
        "free_gb": "number",
        "total_bytes": "number",
        "inodes_used_percent": "number",
        "response_time_ms": "number",
    }
    DEFAULT_CONDITIONS = ("used_percent < 90",)

    def target(self) -> str:
        return self.path

    async def probe(self, prober: Prober, facts: Facts) -> None:
        started = time.perf_counter()
        facts.update(await prober.blocking(_usage, os.path.expanduser(self.path)))
        facts["response_time_ms"] = elapsed_ms(started)


def _usage(path: str) -> dict[str, Any]:
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    inodes_used = st.f_files - st.f_ffree
    inodes_total = inodes_used + st.f_favail
    return {
        "used_percent": round(used / (used + avail) * 100, 2) if used + avail else 0.0,
        "free_bytes": avail,
        "free_gb": round(avail / 1e9, 2),
        "total_bytes": st.f_blocks * st.f_frsize,
        "inodes_used_percent": round(inodes_used / inodes_total * 100, 2) if inodes_total else 0.0,
    }
