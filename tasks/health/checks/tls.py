"""`tls`: the server's certificate — days until it expires, whether it verifies, its subject.

A certificate that cannot be verified (self-signed, expired, wrong name) is still read, so
its expiry is known; `verified` says whether it could be.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tasks.health.checks.base import CONNECTION, CheckBase, Facts
from tasks.health.checks.tcp import close_stream
from tasks.health.facts import elapsed_ms

if TYPE_CHECKING:
    from tasks.health.prober import Prober


class TlsCheck(CheckBase):
    type: Literal["tls"]
    host: str
    port: int = Field(default=443, ge=1, le=65535)
    server_name: str | None = Field(default=None, description="SNI; default: host")

    PLACEHOLDERS = {**CONNECTION, "cert_days": "number", "verified": "bool", "subject": "string"}
    DEFAULT_CONDITIONS = ("cert_days > 14",)

    def target(self) -> str:
        return f"tls://{self.host}:{self.port}"

    async def probe(self, prober: Prober, facts: Facts) -> None:
        from cryptography import x509

        sni = self.server_name or self.host
        started = time.perf_counter()
        verified = True
        try:
            _r, writer = await asyncio.open_connection(
                self.host, self.port, ssl=ssl.create_default_context(), server_hostname=sni
            )
        except ssl.SSLCertVerificationError as exc:
            # Not verifiable (self-signed, expired, wrong name): still read its expiry date.
            verified, facts["verify_error"] = False, exc.verify_message or str(exc)
            insecure = ssl.create_default_context()
            insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
            _r, writer = await asyncio.open_connection(
                self.host, self.port, ssl=insecure, server_hostname=sni
            )
        except OSError:
            facts["connected"] = False
            raise
        try:
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        finally:
            await close_stream(writer)
        cert = x509.load_der_x509_certificate(der)
        expires = cert.not_valid_after_utc
        facts.update(
            connected=True,
            verified=verified,
            response_time_ms=elapsed_ms(started),
            cert_days=round((expires - datetime.now(UTC)).total_seconds() / 86400, 2),
            expires_at=expires.isoformat(),
            subject=cert.subject.rfc4514_string(),
        )
