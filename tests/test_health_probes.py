"""Every check type against real targets: the PostgreSQL, MariaDB and Redis on this machine,
loopback HTTP/TLS/DNS servers, and targets that are closed, slow or hang."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tasks.health.prober import Prober
from tasks.health.results import ConditionOutcome, judge
from tasks.health.sweep_input import SweepInput
from tests.conftest import require_service
from tests.health_helpers import (
    dns_server,
    free_port,
    hanging_server,
    make_certificate,
    service,
    tls_server,
)

PG = "postgresql://postgres@127.0.0.1:5432/postgres"
MARIADB = "mysql://root@127.0.0.1:3306/test"
REDIS = "redis://127.0.0.1:6379/0"


class Probed:
    def __init__(self, health: str, error: str | None, conditions: list[ConditionOutcome]):
        self.health, self.error = health, error
        self.conditions = {c.condition: (c.ok, c.actual) for c in conditions}


def probe(*checks: dict[str, Any], concurrency: int = 10, per_host: int = 10) -> dict[str, Probed]:
    """Probe checks the way a sweep does (one Prober, concurrently) and judge each."""
    inputs = SweepInput.model_validate(
        {"checks": list(checks), "concurrency": concurrency, "connections_per_host": per_host}
    )

    async def go() -> list[Any]:
        async with Prober(inputs.concurrency, inputs.connections_per_host) as prober:
            return await asyncio.gather(*(prober.observe(c) for c in inputs.checks))

    observations = asyncio.run(go())
    out = {}
    for check, obs in zip(inputs.checks, observations, strict=True):
        health, conditions = judge(check, obs)
        out[check.name] = Probed(health, obs.error, conditions)
    return out


def test_postgres_mariadb_redis_pass_here() -> None:
    require_service("PostgreSQL", 5432)
    require_service("MariaDB", 3306)
    require_service("Redis", 6379)
    got = probe(
        {
            "name": "pg",
            "type": "postgres",
            "dsn": PG,
            "query": "SELECT n FROM generate_series(1, 3) AS n",
            "conditions": ["connected == true", "row_count == 3", "value == 1"],
        },
        {
            "name": "maria",
            "type": "mysql",
            "dsn": MARIADB,
            "query": "SELECT VERSION()",
            "conditions": ["connected == true", "row_count == 1", 'value matches "MariaDB"'],
        },
        {"name": "redis", "type": "redis", "url": REDIS, "conditions": ['value == "PONG"']},
        {
            "name": "redis-dbsize",
            "type": "redis",
            "url": REDIS,
            "command": "DBSIZE",
            "conditions": ["value >= 0"],
        },
    )
    for name, result in got.items():
        assert result.health == "ok", (name, result.error, result.conditions)
        assert result.error is None


def test_databases_fail_cleanly_against_a_closed_port() -> None:
    port = free_port()
    got = probe(
        {"name": "pg", "type": "postgres", "dsn": f"postgresql://postgres@127.0.0.1:{port}/x"},
        {"name": "maria", "type": "mysql", "dsn": f"mysql://root:pw@127.0.0.1:{port}/test"},
        {"name": "redis", "type": "redis", "url": f"redis://127.0.0.1:{port}/0"},
        {"name": "tcp", "type": "tcp", "host": "127.0.0.1", "port": port},
    )
    for result in got.values():
        assert result.health == "failing"
        assert result.conditions == {"connected == true": (False, "false")}
        assert result.error is not None
        assert "Traceback" not in result.error
        assert "\n" not in result.error
    assert got["pg"].error == (
        f'OperationalError: connection to server at "127.0.0.1", port {port} failed: '
        "Connection refused"
    )
    for name in ("maria", "redis", "tcp"):
        assert got[name].error == "connection refused"


def test_a_failing_query_fails_a_connected_check() -> None:
    require_service("PostgreSQL", 5432)
    got = probe({"name": "pg", "type": "postgres", "dsn": PG, "query": "SELECT * FROM nope"})
    assert got["pg"].health == "failing"
    assert got["pg"].conditions == {"connected == true": (True, "true")}
    assert got["pg"].error == 'UndefinedTable: relation "nope" does not exist'


def test_closed_port_can_be_the_expectation() -> None:
    got = probe(
        {
            "name": "telnet-closed",
            "type": "tcp",
            "host": "127.0.0.1",
            "port": free_port(),
            "conditions": ["connected == false"],
        }
    )
    assert got["telnet-closed"].health == "ok"


@pytest.mark.parametrize(("days_left", "passes"), [(-3, False), (5, False), (90, True)])
def test_tls_certificate_expiry(tmp_path: Path, days_left: float, passes: bool) -> None:
    cert, key = make_certificate(tmp_path, days_left=days_left)
    with tls_server(cert, key) as port:
        got = probe(
            {
                "name": "cert",
                "type": "tls",
                "host": "127.0.0.1",
                "port": port,
                "conditions": ["cert_days > 14"],
                "warn": ["verified == true"],
            }
        )["cert"]
    ok, actual = got.conditions["cert_days > 14"]
    assert ok is passes
    assert abs(float(actual) - days_left) < 0.1
    assert got.conditions["verified == true"] == (False, "false")  # self-signed
    assert got.health == ("degraded" if passes else "failing")
    assert got.error is None


def test_dns_answers_from_a_real_server() -> None:
    with dns_server({"orders.internal": ["10.0.0.7", "10.0.0.8"]}) as port:
        common = {"type": "dns", "server": "127.0.0.1", "port": port, "timeout_s": 2}
        got = probe(
            {
                **common,
                "name": "orders",
                "query": "orders.internal",
                "conditions": [
                    'rcode == "NOERROR"',
                    'answers contains "10.0.0.7"',
                    "answer_count == 2",
                ],
            },
            {
                **common,
                "name": "exact",
                "query": "orders.internal",
                "expect": ["10.0.0.8", "10.0.0.7"],
            },
            {**common, "name": "moved", "query": "orders.internal", "expect": ["10.0.0.9"]},
            {**common, "name": "gone", "query": "missing.internal"},
        )
    assert got["orders"].health == "ok"
    assert got["exact"].health == "ok"
    assert got["moved"].conditions['answers == ["10.0.0.9"]'] == (False, '["10.0.0.7", "10.0.0.8"]')
    assert got["gone"].conditions['rcode == "NOERROR"'] == (False, '"NXDOMAIN"')


def test_http_conditions_read_status_json_headers_and_body() -> None:
    with service() as svc:
        got = probe(
            {
                "name": "api",
                "type": "http",
                "url": f"{svc.url}/health",
                "conditions": [
                    "status in [200, 204]",
                    'body.status == "UP"',
                    "body.items[2] == 3",
                    "len(body.items) == 3",
                    'body contains "UP"',
                    'headers.x-service == "orders"',
                    "response_time_ms < 5000",
                    "connected == true",
                ],
                "warn": ['body.missing == "x"'],
            }
        )["api"]
    assert got.health == "degraded"
    assert all(ok for cond, (ok, _) in got.conditions.items() if "missing" not in cond)
    assert got.conditions['body.missing == "x"'] == (False, "<no body.missing>")


def test_slow_endpoint_hits_its_timeout() -> None:
    with service() as svc:
        got = probe(
            {"name": "slow", "type": "http", "url": f"{svc.url}/slow", "timeout_s": 0.5},
            {"name": "fast", "type": "http", "url": f"{svc.url}/health"},
        )
    assert got["slow"].health == "failing"
    assert got["slow"].error in ("timed out after 0.5s", "timed out")
    assert got["slow"].conditions["status >= 200"] == (False, "<no value>")
    assert got["fast"].health == "ok"


def test_waiting_behind_a_hanging_target_is_not_a_timeout() -> None:
    """With one connection per host, the fast check queues behind the slow one; its own
    timeout only starts when it gets the connection."""
    with service() as svc:
        got = probe(
            {"name": "slow", "type": "http", "url": f"{svc.url}/slow", "timeout_s": 1},
            *(
                {"name": f"fast-{i}", "type": "http", "url": f"{svc.url}/health", "timeout_s": 1}
                for i in range(3)
            ),
            per_host=1,
        )
        assert got["slow"].error in ("timed out after 1s", "timed out")
        for i in range(3):
            assert got[f"fast-{i}"].health == "ok", got[f"fast-{i}"].error


def test_hanging_targets_never_delay_the_sweep_beyond_their_timeout() -> None:
    """Every kind of client against a server that accepts and never answers: each check gives
    up at its timeout and the sweep returns while the server is still hanging."""
    with hanging_server() as hang:
        where = f"127.0.0.1:{hang.port}"
        hanging: list[dict[str, Any]] = [
            {"type": "http", "url": f"http://{where}/"},
            {"type": "tls", "host": "127.0.0.1", "port": hang.port},
            {"type": "postgres", "dsn": f"postgresql://postgres@{where}/x"},
            {"type": "mysql", "dsn": f"mysql://root@{where}/test"},
            {"type": "redis", "url": f"redis://{where}/0"},
            {"type": "command", "command": ["sleep", "60"]},
        ]
        checks = [{**c, "name": c["type"], "timeout_s": 1} for c in hanging]
        checks.append({"name": "disk", "type": "disk", "path": "/"})
        got = probe(*checks)
        assert hang.still_hanging
    for check in hanging:
        result = got[check["type"]]
        assert result.health == "failing", check
        assert result.error in ("timed out after 1s", "timed out"), (check, result.error)
    assert got["disk"].health == "ok"


def test_command_and_disk_checks() -> None:
    got = probe(
        {
            "name": "json-out",
            "type": "command",
            "command": ["sh", "-c", "echo '{\"queue\": 3}'; exit 0"],
            "conditions": ["exit_code == 0", "output.queue < 10"],
        },
        {
            "name": "fails",
            "type": "command",
            "command": "sh -c 'echo broken >&2; exit 4'",
            "conditions": ["exit_code == 0"],
            "warn": ['stderr contains "broken"'],
        },
        {
            "name": "root",
            "type": "disk",
            "path": "/",
            "conditions": ["used_percent <= 100", "free_bytes > 0", "inodes_used_percent < 100"],
        },
        {"name": "nowhere", "type": "disk", "path": "/no/such/dir"},
    )
    assert got["json-out"].health == "ok"
    assert got["fails"].conditions["exit_code == 0"] == (False, "4")
    assert got["fails"].conditions['stderr contains "broken"'][0] is True
    assert got["root"].health == "ok"
    assert got["nowhere"].health == "failing"
    assert (
        got["nowhere"].error
        == "FileNotFoundError: [Errno 2] No such file or directory: '/no/such/dir'"
    )
