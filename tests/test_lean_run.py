"""`ktlo run` imports only what the runbook needs (item 8 of issue 12: measured in bench/)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys

import pytest

from tests.conftest import Home
from tests.helpers import REPO

PROBE = """
import sys
from ktlo.runbook.loader import find_runbook, load_runbook
from ktlo.steps import registry

load_runbook(find_runbook("basic"))
heavy = sorted(m for m in sys.modules if m.endswith(".steps") and m.startswith("tasks."))
print("basic:", ",".join(heavy) or "-", "asyncssh" in sys.modules)
assert registry.get("backup.verify") is not None  # a domain's type: loaded when asked for
print("domain:", "tasks.backup.steps" in sys.modules)
"""


def test_a_runbook_of_basic_steps_loads_no_domain(home: Home) -> None:
    home.runbook(
        "basic",
        """
        name: basic
        steps:
          - id: hello
            uses: log
            with: {message: hi}
          - id: ls
            uses: shell
            with: {command: "true"}
        """,
    )
    env = {"PATH": "/usr/bin:/bin", **home.env}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["basic: - False", "domain: True"]


STORE_PROBE = """
import sys
from ktlo.store.db import engine, table_names

names = table_names(engine())
print("domain tables imported:", "tasks.tables" in sys.modules)
print("all tables there:", {"ktlo_run", "ktlo_incident", "ktlo_backup"} <= set(names))
"""


def _probe(code: str, env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_cli_imports_no_store_before_a_command_asks_for_it(home: Home) -> None:
    code = "import sys, ktlo.app.cli; print(sorted({'sqlalchemy', 'sqlmodel'} & set(sys.modules)))"
    assert _probe(code, home.env) == ["[]"]


def _migrated_then_skipped(home: Home) -> None:
    """One process migrates (imports the domains' tables); the next one skips that."""
    assert _probe(STORE_PROBE, home.env) == [
        "domain tables imported: True",
        "all tables there: True",
    ]
    assert _probe(STORE_PROBE, home.env) == [
        "domain tables imported: False",
        "all tables there: True",
    ]


def test_a_store_stamped_by_the_same_code_is_not_migrated_again(home: Home) -> None:
    """The first process creates every table; the next skips importing the domains' tables."""
    _migrated_then_skipped(home)
    from ktlo.store.db import engine, reset_engines

    reset_engines()
    with engine().begin() as conn:  # another version of ktlo migrated the store since
        conn.exec_driver_sql(
            "INSERT INTO ktlo_schema (version, description, applied_at) "
            "VALUES (99, 'newer', CURRENT_TIMESTAMP)"
        )
    reset_engines()
    _migrated_then_skipped(home)


def _children(pid: int) -> list[str]:
    """Command lines of `pid`'s child processes."""
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        kids = [int(k) for k in handle.read().split()]
    lines = []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as handle:
                lines.append(handle.read().replace(b"\0", b" ").decode(errors="replace"))
        except FileNotFoundError:
            continue
    return lines


def test_serve_starts_the_fork_server_with_itself(prefect_api: str, home: Home) -> None:
    """The first served run does not wait 2-4 s for the fork server's imports."""
    from tests.serve_helpers import Served

    home.runbook("basic", "name: basic\nsteps:\n  - {id: hello, uses: log, with: {message: hi}}\n")
    served = Served(home.env)
    try:
        served.wait_for("serving 1 runbook(s)")
        assert any("multiprocessing.forkserver" in line for line in _children(served.proc.pid))
    finally:
        served.stop()


def test_a_plain_http_api_spares_prefect_the_ca_bundle(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect builds an SSL context per client from PREFECT_API_SSL_CERT_FILE, http or not."""
    from ktlo.orchestration.local_server import plain_http_tls

    monkeypatch.setenv("PREFECT_API_SSL_CERT_FILE", "")  # restored (unset) after the test
    monkeypatch.delenv("PREFECT_API_SSL_CERT_FILE")
    plain_http_tls("https://prefect.example/api")
    assert "PREFECT_API_SSL_CERT_FILE" not in os.environ  # TLS in use: certifi stays
    plain_http_tls("http://127.0.0.1:4200/api")
    cafile = os.environ["PREFECT_API_SSL_CERT_FILE"]
    assert ssl.create_default_context(cafile=cafile).cert_store_stats()["x509_ca"] == 1
    monkeypatch.setenv("PREFECT_API_SSL_CERT_FILE", "/etc/ssl/operator.pem")
    plain_http_tls("http://127.0.0.1:4200/api")
    assert os.environ["PREFECT_API_SSL_CERT_FILE"] == "/etc/ssl/operator.pem"
