"""clusters.yaml problems are one `path:line` line each; without the file the failover
runbooks still validate and a run says what is missing (no traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Home
from tests.helpers import REPO, cli

BAD = """\
clusters:
  orders-db:
    kind: postgres
    max_lag_bytes: -1
    nodes:
      n1: {dsn: "host=127.0.0.1 port=55432", data_dir: /srv/pg/n1, hostt: here}
      n2: {dsn: "host=127.0.0.1 port=55433", data_dir: /srv/pg/n2}
    router: {kind: haproxy, socket: /run/haproxy/admin.sock}
"""


def test_bad_clusters_file_names_each_line(home: Home, tmp_path: Path) -> None:
    path = tmp_path / "clusters.yaml"
    path.write_text(BAD)
    done = cli("failover", "status", env={**home.env, "KTLO_CLUSTERS": str(path)})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"{path}:4: " in done.stderr
    assert "max_lag_bytes" in done.stderr
    assert f"{path}:6: " in done.stderr
    assert "unknown key 'hostt' (did you mean 'host'?)" in done.stderr


def test_runbooks_validate_and_fail_clearly_without_clusters(home: Home, run: Any) -> None:
    runbooks = [
        REPO / "runbooks" / f"{n}.yaml"
        for n in ("pg-failover", "pg-switchover", "pg-rejoin", "pg-watch")
    ]
    done = cli("validate", *map(str, runbooks), env=home.env)
    assert done.returncode == 0, done.stdout + done.stderr
    missing = cli("failover", "status", env=home.env)
    assert missing.returncode == 1
    assert "no clusters file" in missing.stderr
    assert "KTLO_CLUSTERS" in missing.stderr
    result = run(REPO / "runbooks" / "pg-rejoin.yaml", cluster="orders-db", node="n1")
    assert result.status == "failed"
    error = result.steps["rejoin"].error
    assert "no clusters file" in error
    assert "Traceback" not in error
