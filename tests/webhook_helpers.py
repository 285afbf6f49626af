"""The receiver on a real loopback port (in a thread, or as a `ktlo webhook` process), and
alert payloads as senders write them."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import KTLO

TOKEN = "test-token-7f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """ktlo's receiver app under ktlo's uvicorn server in a thread (no dispatcher unless given
    one). Its limits come from the KTLO_WEBHOOK_* settings, as in `ktlo serve`."""

    def __init__(self, token: str | None = TOKEN, dispatcher: Any = None):
        from ktlo.incidents.receiver import create_app, make_server

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = make_server(create_app(token, dispatcher=dispatcher), "127.0.0.1", self.port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)

    def post(
        self,
        source: str,
        body: Any,
        *,
        token: str | None = TOKEN,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        data = raw if raw is not None else json.dumps(body).encode()
        hdrs = {"content-type": "application/json", **(headers or {})}
        if token is not None:
            hdrs["authorization"] = f"Bearer {token}"
        return httpx.post(f"{self.url}/hooks/{source}", content=data, headers=hdrs, timeout=60)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class WebhookProcess:
    """A real `ktlo webhook` process on a loopback port."""

    def __init__(self, env: dict[str, str], port: int, log: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [KTLO, "webhook", "--port", str(port)],
            env={**os.environ, **env, "KTLO_WEBHOOK_TOKEN": TOKEN},
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError("ktlo webhook did not start: " + log.read_text()[-2000:])

    def post(self, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{self.url}/hooks/generic",
            json=body,
            headers={"authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )

    def rss_mib(self) -> float:
        """Resident memory of the receiver process, from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS in /proc status")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)


def sign(body: bytes, key: str = TOKEN, t: int | None = None) -> str:
    """`X-Ktlo-Signature` as a sender computes it: HMAC-SHA256 of "<t>.<body>"."""
    stamp = str(int(time.time()) if t is None else t)
    digest = hmac.new(key.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def alertmanager(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="x"}',
        "status": status,
        "receiver": "ktlo",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "truncatedAlerts": 0,
        "alerts": list(alerts),
    }


def prom_alert(
    name: str, fingerprint: str | None = None, status: str = "firing", **labels: str
) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "status": status,
        "labels": {"alertname": name, **labels},
        "annotations": {"summary": f"{name} on {labels.get('instance', 'host')}"},
        "startsAt": "2026-11-25T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
    }
    if fingerprint:
        alert["fingerprint"] = fingerprint
    return alert
