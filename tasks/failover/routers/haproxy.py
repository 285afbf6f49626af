"""HAProxy through its admin stats socket (`stats socket PATH level admin`).

One command per connection (the socket's non-interactive mode); replies that are not empty
are errors, except for `show stat`. States come from `show stat` (CSV).
"""

from __future__ import annotations

import asyncio

from ktlo.errors import KtloError
from tasks.failover.routers.base import Router, RouterAction, register

# A server leaving maintenance counts as UP until `fall` checks fail (HAProxy 2.6; health set
# while in maintenance is ignored): marking its health down right after makes "enable" mean
# "back under health checks, down until they pass" (the window is one socket round trip).
COMMANDS = {
    RouterAction.DISABLE: ("disable server {b}/{s}",),
    RouterAction.ENABLE: ("enable server {b}/{s}", "set server {b}/{s} health down"),
    RouterAction.DRAIN: ("set server {b}/{s} state drain",),
    RouterAction.UP: ("set server {b}/{s} health up",),
}


class HAProxy(Router):
    kind = "haproxy"

    async def command(self, line: str) -> str:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.spec.socket), self.spec.timeout_s
            )
        except (OSError, TimeoutError) as exc:
            raise KtloError(f"haproxy admin socket {self.spec.socket}: {exc}") from None
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), self.spec.timeout_s)
        except (OSError, TimeoutError) as exc:
            raise KtloError(
                f"haproxy admin socket {self.spec.socket}: {exc or 'timed out'}"
            ) from None
        finally:
            writer.close()
        return data.decode(errors="replace")

    async def states(self) -> dict[str, str]:
        rows = (await self.command("show stat")).splitlines()
        if not rows or not rows[0].startswith("#"):
            raise KtloError(f"haproxy: unexpected reply to 'show stat': {rows[:1]}")
        header = rows[0].lstrip("# ").split(",")
        px, sv, st = header.index("pxname"), header.index("svname"), header.index("status")
        out = {}
        for row in rows[1:]:
            cols = row.split(",")
            if (
                len(cols) > st
                and cols[px] == self.spec.backend
                and cols[sv] not in ("BACKEND", "FRONTEND")
            ):
                out[cols[sv]] = cols[st]
        return out

    async def apply(self, server: str, action: RouterAction) -> None:
        for line in COMMANDS[action]:
            reply = (await self.command(line.format(b=self.spec.backend, s=server))).strip()
            if reply:
                raise KtloError(
                    f"haproxy refused '{action}' of {self.spec.backend}/{server}: {reply}"
                )


register(HAProxy)
