"""Real targets for health-check tests: an HTTP service that goes down and comes back, a
server that hangs, a TLS server with a generated certificate, a UDP DNS server."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Home, require_service

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            self.server.release.wait(30)
        if self.path.startswith("/status/"):
            code = int(self.path.rsplit("/", 1)[1])
            self._send(code, {"status": "DOWN"})
            return
        self._send(200, {"status": "UP", "items": [1, 2, 3]})

    def _send(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.send_header("x-service", "orders")
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    release: threading.Event


@dataclass
class Service:
    """An HTTP service on a fixed port that can be stopped and started again."""

    port: int = field(default_factory=free_port)
    server: _Server | None = None
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self.server is None:
            self.server = _Server(("127.0.0.1", self.port), _Handler)
            self.server.release = self.release
            threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@contextmanager
def service() -> Iterator[Service]:
    svc = Service()
    svc.start()
    try:
        yield svc
    finally:
        svc.release.set()
        svc.stop()


@dataclass
class Hang:
    """Accepts connections and never answers until released."""

    port: int
    accepted: list[socket.socket]
    released: threading.Event

    @property
    def still_hanging(self) -> bool:
        return not self.released.is_set()


@contextmanager
def hanging_server() -> Iterator[Hang]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    hang = Hang(int(listener.getsockname()[1]), [], threading.Event())

    def accept() -> None:
        while not hang.released.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            hang.accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield hang
    finally:
        hang.released.set()
        thread.join(2)
        for conn in hang.accepted:
            conn.close()
        listener.close()


def make_certificate(directory: Path, *, days_left: float) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost expiring in `days_left` days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ktlo-test")])
    not_after = now + dt.timedelta(days=days_left)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, not_after) - dt.timedelta(days=30))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"cert-{days_left}.pem", directory / f"key-{days_left}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    """A TLS server that completes handshakes (and nothing else)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                conn.settimeout(5)
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        listener.close()


@contextmanager
def dns_server(records: dict[str, list[str]]) -> Iterator[int]:
    """A UDP DNS server on loopback answering A queries from `records` (else NXDOMAIN)."""
    import dns.message
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().rstrip(".")
            if name in records and question.rdtype == dns.rdatatype.A:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 60, "IN", "A", records[name])
                )
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            sock.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def sweep_runbook(
    home: Home,
    checks: list[dict[str, Any]],
    *,
    name: str = "hc",
    extra: dict[str, Any] | None = None,
    steps: list[dict[str, Any]] | None = None,
) -> Path:
    """A runbook with one `health.sweep` step (id `sweep`) over `checks`."""
    doc = {
        "name": name,
        "steps": [
            {"id": "sweep", "uses": "health.sweep", "with": {"checks": checks, **(extra or {})}},
            *(steps or []),
        ],
    }
    path = home.runbooks / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def titles(receiver: Any) -> list[str]:
    """Titles of the apprise `json://` notifications the receiver got, in order."""
    return [str(body.get("title", "")) for body in receiver.json_urls()]


def messages(receiver: Any) -> list[dict[str, Any]]:
    return [body for body in receiver.json_urls() if "title" in body]


def wait_for(predicate: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.fixture(params=["sqlite", "postgres"])
def store(
    request: pytest.FixtureRequest, home: Home, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """The ktlo store on the embedded SQLite default and on a fresh PostgreSQL database."""
    import uuid

    from sqlalchemy import create_engine, text

    from ktlo.settings import reload_settings
    from ktlo.store.db import reset_engines

    if request.param == "sqlite":
        yield "sqlite"
        return
    require_service("PostgreSQL", 5432)
    name = f"ktlo_health_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    monkeypatch.setenv("KTLO_DATABASE_URL", f"postgresql://postgres@127.0.0.1:5432/{name}")
    reset_engines()
    reload_settings()
    try:
        yield "postgres"
    finally:
        reset_engines()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
