"""Attacks on a real `ktlo webhook` process: slowloris, connection floods, slow unauthenticated
uploads. The receiver must close what does not authenticate in time, keep its memory, and
keep acknowledging valid alerts quickly meanwhile."""

from __future__ import annotations

import contextlib
import selectors
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Home
from tests.webhook_helpers import WebhookProcess, free_port

pytestmark = pytest.mark.timeout(300)
SLOW_HEAD = b"POST /hooks/generic HTTP/1.1\r\nhost: ktlo\r\n"


@pytest.fixture
def webhook(home: Home, prefect_api: str, tmp_path: Path) -> Iterator[Any]:
    started: list[WebhookProcess] = []

    def start(**env: str) -> WebhookProcess:
        w = WebhookProcess({**home.env, **env}, free_port(), tmp_path / "webhook.log")
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop(signal.SIGKILL)


def _open(port: int, count: int, first: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.send(first)
        socks.append(sock)
    return socks


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (EOF or reset; a 408 first is fine)."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _trickle(socks: list[socket.socket], seconds: float) -> None:
    """Slowloris: one more header line per connection every half second."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b"x-slow: 1\r\n")
        time.sleep(0.5)


def _ack_s(receiver: WebhookProcess, key: str) -> float:
    started = time.monotonic()
    response = receiver.post({"summary": key, "dedup_key": key})
    assert response.status_code == 202, response.text
    return time.monotonic() - started


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


def test_slowloris_connections_are_closed_after_the_header_timeout(webhook: Any) -> None:
    receiver = webhook(KTLO_WEBHOOK_HEADER_TIMEOUT_S="2")
    socks = _open(receiver.port, 300, SLOW_HEAD)
    try:
        _trickle(socks, 1.0)
        during = _ack_s(receiver, "during-slowloris")
        _trickle(socks, 3.0)  # past the header timeout, still sending a line now and then
        survivors = [s for s in socks if not _closed_by_server(s)]
        assert not survivors, f"{len(survivors)} of 300 slow connections still open"
        assert during < 1.0, f"a valid alert took {during:.2f} s during the attack"
    finally:
        _close_all(socks)


def test_over_the_connection_limit_idle_connections_give_way(webhook: Any) -> None:
    receiver = webhook(KTLO_WEBHOOK_MAX_CONNECTIONS="50", KTLO_WEBHOOK_HEADER_TIMEOUT_S="60")
    socks = _open(receiver.port, 120, SLOW_HEAD)
    try:
        time.sleep(1)
        open_now = [s for s in socks if not _closed_by_server(s)]
        assert len(open_now) <= 50, f"{len(open_now)} connections held past a limit of 50"
        assert socks[-1] in open_now, "the newest connection was refused, not the oldest idle"
        for i in range(5):  # each valid alert gets in, past a full house of idle connections
            assert _ack_s(receiver, f"past-the-limit-{i}") < 1.0
    finally:
        _close_all(socks)


def _slow_uploads(port: int, count: int) -> list[socket.socket]:
    """Unauthenticated uploads of a declared 1,000,000-byte body, sent 64 KiB at a time."""
    head = (
        b"POST /hooks/generic HTTP/1.1\r\nhost: ktlo\r\ncontent-type: application/json\r\n"
        b"authorization: Bearer not-the-token\r\ncontent-length: 1000000\r\n\r\n"
    )
    socks = _open(port, count, head)
    chunk = b"x" * 65536
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_WRITE)
    sent = dict.fromkeys(socks, 0)
    by_fd = {sock.fileno(): sock for sock in socks}
    deadline = time.monotonic() + 30
    while sent and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.5):
            sock = by_fd[key.fd]
            try:
                sent[sock] += sock.send(chunk)
            except OSError:
                sent[sock] = 900_000
            if sent[sock] >= 900_000:  # all but the end: the upload stays open
                selector.unregister(sock)
                del sent[sock]
        if not selector.get_map():
            break
    selector.close()
    return socks


def test_memory_returns_after_slow_uploads_and_slowloris(webhook: Any) -> None:
    receiver = webhook(KTLO_WEBHOOK_HEADER_TIMEOUT_S="2")
    for i in range(20):
        _ack_s(receiver, f"warm-{i}")
    before = receiver.rss_mib()
    uploads = _slow_uploads(receiver.port, 600)
    loris = _open(receiver.port, 300, SLOW_HEAD)
    try:
        _trickle(loris, 1.0)
        during = receiver.rss_mib()
        ack = max(_ack_s(receiver, f"under-attack-{i}") for i in range(5))
    finally:
        _close_all(uploads)
        _close_all(loris)
    time.sleep(3)
    after = receiver.rss_mib()
    report = f"RSS {before:.0f} → {during:.0f} → {after:.0f} MiB, slowest ack {ack:.2f} s"
    print(report)
    assert during - before < 64, report
    assert after - before < 32, report
    assert ack < 1.0, report
