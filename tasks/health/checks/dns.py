"""`dns`: one query to a DNS server (UDP, TCP when truncated); its rcode and answers."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tasks.health.checks.base import CONNECTION, CheckBase, Facts
from tasks.health.facts import elapsed_ms

if TYPE_CHECKING:
    from tasks.health.prober import Prober

RecordType = Literal["A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "CAA"]


class DnsCheck(CheckBase):
    type: Literal["dns"]
    query: str = Field(description="the name to resolve")
    record: RecordType = "A"
    server: str | None = Field(default=None, description="default: the system's first resolver")
    port: int = Field(default=53, ge=1, le=65535)
    expect: list[str] | None = Field(
        default=None, description="the exact set of answers (adds a condition)"
    )

    PLACEHOLDERS = {**CONNECTION, "rcode": "string", "answers": "list", "answer_count": "number"}
    DEFAULT_CONDITIONS = ('rcode == "NOERROR"',)

    def critical(self) -> list[str]:
        out = super().critical()
        if self.expect is not None:
            out = [*out, f"answers == {json.dumps(sorted(self.expect))}"]
        return out

    def target(self) -> str:
        where = f" @{self.server}:{self.port}" if self.server else ""
        return f"{self.record} {self.query}{where}"

    async def probe(self, prober: Prober, facts: Facts) -> None:
        import dns.asyncquery
        import dns.message
        import dns.rcode
        import dns.rdatatype

        server = self.server or _system_resolver()
        query = dns.message.make_query(self.query, self.record)
        started = time.perf_counter()
        response, _tcp = await dns.asyncquery.udp_with_fallback(
            query, server, timeout=self.timeout_s, port=self.port
        )
        wanted = dns.rdatatype.from_text(self.record)
        answers = []
        for rrset in response.answer:
            if rrset.rdtype == wanted:
                for rdata in rrset:
                    if self.record == "TXT":
                        answers.append(b"".join(rdata.strings).decode(errors="replace"))
                    else:
                        answers.append(rdata.to_text().rstrip("."))
        facts.update(
            connected=True,
            response_time_ms=elapsed_ms(started),
            rcode=dns.rcode.to_text(response.rcode()),
            answers=sorted(answers),
            answer_count=len(answers),
        )


def _system_resolver() -> str:
    import dns.resolver

    try:
        return str(dns.resolver.Resolver().nameservers[0])
    except (dns.resolver.NoResolverConfiguration, IndexError):
        raise RuntimeError("no DNS server configured: set `server` on the check") from None
