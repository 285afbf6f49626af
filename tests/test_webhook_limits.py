"""The receiver's limits (SPEC §7): per-source body sizes, nesting depth, no work before auth."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlmodel import func, select

from tests.conftest import Home
from tests.helpers import cli
from tests.webhook_helpers import TOKEN, Receiver, alertmanager, prom_alert

MIB = 1024 * 1024


@pytest.fixture
def receiver(home: Home) -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _count_incidents() -> int:
    from ktlo.incidents.store import IncidentRecord
    from ktlo.store.db import session

    with session() as s:
        return int(s.exec(select(func.count()).select_from(IncidentRecord)).one())


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [500, 10_000])
def test_json_nested_too_deeply_is_422_naming_the_depth(receiver: Receiver, depth: int) -> None:
    bodies = {
        "generic": f'{{"summary": "deep", "extra": {_nested(depth)}}}',
        "alertmanager": '{"alerts": [{"status": "firing", "labels": {"a": "b"}, "x": '
        + _nested(depth)
        + "}]}",
        "pagerduty": '{"event_action": "trigger", "links": ' + _nested(depth) + "}",
    }
    for source, body in bodies.items():
        response = receiver.post(source, None, raw=body.encode())
        assert response.status_code == 422, (source, response.status_code, response.text[:300])
        assert "nesting depth" in response.text, response.text[:300]
    assert _count_incidents() == 0
    # brackets inside strings are text, not nesting
    text = {"summary": "[" * 5000 + "{" * 5000, "labels": {"x": "]" * 100 + '"\\'}}
    assert receiver.post("generic", text).status_code == 202
    ok = f'{{"summary": "deep but allowed", "extra": {_nested(60)}}}'
    assert receiver.post("generic", None, raw=ok.encode()).status_code == 202


def test_503_only_when_the_store_is_really_unavailable(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ktlo.settings import reload_settings
    from ktlo.store.db import reset_engines

    r = Receiver()
    try:
        for depth in (300, 700):  # parsed fine, but too deep: once "the store is not available"
            body = f'{{"summary": "deep", "extra": {_nested(depth)}}}'.encode()
            response = r.post("generic", None, raw=body)
            assert response.status_code == 422, response.text[:300]
        assert r.post("generic", {"summary": "fine"}).status_code == 202
    finally:
        r.close()
    monkeypatch.setenv("KTLO_DATABASE_URL", "postgresql://postgres@127.0.0.1:9/ktlo")  # closed
    reset_engines()
    reload_settings()
    down = Receiver()
    try:
        response = down.post("generic", {"summary": "store down"})
        assert response.status_code == 503, response.text
        assert "store is not available" in response.json()["detail"]
    finally:
        down.close()


def _group(count: int, size: int) -> dict[str, Any]:
    pad = "x" * max(0, size - 400)
    alerts = [
        {
            **prom_alert("NodeDown", f"fp-{i:05d}", instance=f"node-{i}:9100", job="node"),
            "annotations": {"summary": f"node-{i} down", "description": pad},
        }
        for i in range(count)
    ]
    body = alertmanager(*alerts)
    body["truncatedAlerts"] = 37
    return body


def test_a_5_mib_alertmanager_group_is_stored_whole(receiver: Receiver, home: Home) -> None:
    body = _group(5000, 1150)
    raw = json.dumps(body).encode()
    assert 5 * MIB <= len(raw) < 6 * MIB
    started = time.monotonic()
    response = receiver.post("alertmanager", None, raw=raw)
    assert response.status_code == 202, response.text[:300]
    took = time.monotonic() - started
    ack = response.json()
    assert ack["accepted"] == 5000
    assert ack["truncated_alerts"] == 37
    assert {i["outcome"] for i in ack["incidents"]} == {"opened"}
    assert _count_incidents() == 5000, f"stored after {took:.1f} s"
    shown = cli("incidents", "show", "alertmanager:fp-04999", "--json", env=home.env)
    assert shown.returncode == 0, shown.stderr
    opened = [t for t in json.loads(shown.stdout)["timeline"] if t["what"] == "incident.opened"]
    assert opened[0]["details"]["truncated_alerts"] == 37
    assert (
        "37 alerts of its group left out"
        in cli("incidents", "show", "alertmanager:fp-00000", env=home.env).stdout
    )


def test_body_limits_per_source_name_the_limit(receiver: Receiver) -> None:
    generic = {"summary": "big", "labels": {"blob": "x" * (2 * MIB)}}
    response = receiver.post("generic", generic)
    assert response.status_code == 413
    assert "1 MiB limit of /hooks/generic" in response.json()["detail"]
    too_big = _group(1, 17 * MIB)
    response = receiver.post("alertmanager", too_big)
    assert response.status_code == 413
    assert "16 MiB limit of /hooks/alertmanager" in response.json()["detail"]
    grafana = {
        "receiver": "ktlo",
        "status": "firing",
        "alerts": [
            {"status": "firing", "labels": {"alertname": f"G{i}"}, "fingerprint": f"g{i}"}
            | {"annotations": {"description": "y" * 1000}}
            for i in range(1500)
        ],
    }
    response = receiver.post("grafana", grafana)
    assert response.status_code == 202, response.text[:300]
    assert response.json()["accepted"] == 1500


def _raw_request(port: int, head: bytes, body: bytes, wait: float) -> tuple[bytes, float]:
    """Send the head and part of a body, then only read: the answer, and how soon it began."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head + body)
        sock.settimeout(wait)
        started = time.monotonic()
        first = wait
        received = b""
        try:
            while chunk := sock.recv(65536):
                first = min(first, time.monotonic() - started)
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received, first


def test_a_wrong_bearer_token_is_refused_before_the_body_is_read(receiver: Receiver) -> None:
    for auth in ("Bearer not-the-token", None):
        head = (
            b"POST /hooks/generic HTTP/1.1\r\nhost: ktlo\r\ncontent-type: application/json\r\n"
            b"content-length: 1000000\r\n"
            + (f"authorization: {auth}\r\n".encode() if auth else b"")
            + b"\r\n"
        )
        answer, waited = _raw_request(receiver.port, head, b'{"summary": "' + b"x" * 10_000, 5)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert waited < 2
    signed_late = (
        b"POST /hooks/generic HTTP/1.1\r\nhost: ktlo\r\ncontent-length: 1000000\r\n"
        b"x-ktlo-signature: t=1000000000,v1=" + b"0" * 64 + b"\r\n\r\n"
    )
    answer, _ = _raw_request(receiver.port, signed_late, b"{", 5)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:300]
    assert b"stale" in answer, answer[:300]
    ok = receiver.post("generic", {"summary": "after", "dedup_key": "after"}, token=TOKEN)
    assert ok.status_code == 202


def test_a_body_that_does_not_arrive_in_time_is_408(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ktlo.settings import reload_settings

    monkeypatch.setenv("KTLO_WEBHOOK_BODY_TIMEOUT_S", "1")
    reload_settings()
    r = Receiver()
    try:
        head = (
            b"POST /hooks/generic HTTP/1.1\r\nhost: ktlo\r\ncontent-length: 1000\r\n"
            + f"authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        answer, waited = _raw_request(r.port, head, b'{"summary": "slo', 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert b"not received within 1 s" in answer
        assert 0.9 < waited < 3
    finally:
        r.close()
