"""What the receiver checks before FastAPI sees a request (SPEC §7), cheapest first.

Credentials that need no body are judged from the headers alone: a bearer token, or a
signature's format and timestamp, so an unauthenticated sender costs no body read (the
reply says `connection: close`, and uvicorn stops reading). Then the body is read against
the source's size limit and a deadline, a signature is checked against it, its nesting depth
is measured on the raw bytes, and pydantic parses it straight into the sender's model (no
intermediate dict). The model goes to the route in the ASGI scope.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from itertools import accumulate
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from ktlo.incidents.sources import PAYLOADS

MIB = 1024 * 1024
DEFAULT_LIMIT = 1 * MIB
LIMITS = {"alertmanager": 16 * MIB, "grafana": 16 * MIB}  # whole alert groups in one POST
MAX_DEPTH = 64
UNVERIFIED_BUDGET = 64 * MIB  # bodies buffered at once before their signature is checked
THREAD_PARSE_BYTES = 64 * 1024  # larger bodies are parsed off the event loop
MAX_ERRORS = 50
PAYLOAD_KEY = "ktlo.payload"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# A JSON string (running to the end of the input if unterminated, so a match never fails
# and the scan stays linear), or one bracket.
_STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


class Refused(Exception):
    """A request answered before it reaches the app: status and the one-line reason."""

    def __init__(
        self,
        status: int,
        detail: str | list[dict[str, Any]],
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def limit_text(size: int) -> str:
    return f"{size // MIB} MiB" if size % MIB == 0 else f"{size} bytes"


def nesting_depth(body: bytes | bytearray) -> int:
    """Deepest nesting of arrays and objects, outside strings, without recursion.

    Bodies with fewer brackets than `MAX_DEPTH` cannot be too deep and are not scanned.
    """
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return 0
    brackets = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _unauthorized(reason: str) -> Refused:
    return Refused(401, reason, {"www-authenticate": "Bearer"})


class Signature:
    """`X-Ktlo-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`."""

    HINT = 'send t=<unix seconds>,v1=<hex HMAC-SHA256, keyed with the token, of "<t>.<body>">'

    def __init__(self, header: str, tolerance_s: int, now: float | None = None):
        header = header.strip()
        if header.lower().startswith("sha256="):
            raise _unauthorized(
                f"X-Ktlo-Signature in the old format (sha256=<hex>, no timestamp) is refused: "
                f"{self.HINT}"
            )
        stamp, digests = "", []
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            if name == "t":
                stamp = value
            elif name == "v1":
                digests.append(value.lower())
        if not (stamp.isascii() and stamp.isdigit()) or not digests:
            raise _unauthorized(f"malformed X-Ktlo-Signature: {self.HINT}")
        age = (time.time() if now is None else now) - int(stamp)
        if age > tolerance_s:
            raise _unauthorized(
                f"stale X-Ktlo-Signature: t= is {age:.0f} s old, over the {tolerance_s} s "
                "tolerance (a replay, or a sender clock off)"
            )
        if -age > tolerance_s:
            raise _unauthorized(
                f"X-Ktlo-Signature t= is {-age:.0f} s in the future, over the {tolerance_s} s "
                "tolerance (a sender clock off)"
            )
        self.stamp = stamp
        self.digests = digests

    def verify(self, token: str, body: bytes | bytearray) -> None:
        mac = hmac.new(token.encode(), self.stamp.encode() + b".", hashlib.sha256)
        mac.update(body)
        expected = mac.hexdigest().encode()
        if not any(hmac.compare_digest(d.encode(), expected) for d in self.digests):
            raise _unauthorized("bad signature: X-Ktlo-Signature does not match the body")


def check_bearer(token: str, headers: dict[str, str]) -> bool:
    """True: the bearer token is right. False: no bearer token. Refused: a wrong one."""
    auth = headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        return False
    if hmac.compare_digest(auth[7:].strip().encode(), token.encode()):
        return True
    raise _unauthorized("wrong bearer token")


async def reply(
    send: Send,
    status: int,
    content: Any,
    headers: dict[str, str] | None = None,
) -> None:
    body = json.dumps(content).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ["body", *e["loc"]], "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)[
            :MAX_ERRORS
        ]
    ]


def parse(model: type[BaseModel], body: bytes | bytearray) -> BaseModel:
    """The body as the sender's model, or 422 naming the depth or the fields in error."""
    depth = nesting_depth(body)
    if depth > MAX_DEPTH:
        raise Refused(422, f"JSON nesting depth {depth} is over the limit of {MAX_DEPTH}")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise Refused(422, _validation_detail(exc)) from None


class Guard:
    """Authentication, size and time limits for POST /hooks/<source>, before FastAPI."""

    def __init__(self, app: Any, token: str | None, tolerance_s: int, body_timeout_s: float):
        self.app = app
        self.token = token
        self.tolerance_s = tolerance_s
        self.body_timeout_s = body_timeout_s
        self.unverified = 0  # bytes buffered by requests whose signature is not checked yet

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        source = str(scope.get("path", "")).removeprefix("/hooks/")
        if scope["type"] != "http" or scope.get("method") != "POST" or source not in PAYLOADS:
            await self.app(scope, receive, send)
            return
        try:
            payload = await self._admit(source, scope, receive)
        except Refused as refused:
            headers = dict(refused.headers)
            if refused.status != 422:
                headers["connection"] = "close"  # the rest of the body is not read
            await reply(send, refused.status, {"detail": refused.detail}, headers)
            return
        if payload is None:
            return  # the sender hung up
        scope = {**scope, PAYLOAD_KEY: payload}

        async def drained() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        await self.app(scope, drained, send)

    async def _admit(self, source: str, scope: Scope, receive: Receive) -> BaseModel | None:
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        signature: Signature | None = None
        if self.token is not None and not check_bearer(self.token, headers):
            if "x-ktlo-signature" not in headers:
                raise _unauthorized(
                    "missing credentials: send Authorization: Bearer <token>, or "
                    f"X-Ktlo-Signature ({Signature.HINT})"
                )
            signature = Signature(headers["x-ktlo-signature"], self.tolerance_s)
        limit = LIMITS.get(source, DEFAULT_LIMIT)
        too_big = Refused(
            413, f"request body over the {limit_text(limit)} limit of /hooks/{source}"
        )
        declared = headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise too_big
        body = await self._read(receive, limit, too_big, counted=signature is not None)
        if body is None:
            return None
        if signature is not None:
            assert self.token is not None
            signature.verify(self.token, body)
        model = PAYLOADS[source]
        if len(body) > THREAD_PARSE_BYTES:
            return await run_in_threadpool(parse, model, body)
        return parse(model, body)

    async def _read(
        self, receive: Receive, limit: int, too_big: Refused, *, counted: bool
    ) -> bytearray | None:
        """The whole body in one buffer, within the size limit and the deadline."""
        body = bytearray()
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    if len(body) + len(chunk) > limit:
                        raise too_big
                    if counted:
                        if self.unverified + len(chunk) > UNVERIFIED_BUDGET:
                            raise Refused(
                                503,
                                "too many signed bodies in flight: retry in a second",
                                {"retry-after": "1"},
                            )
                        self.unverified += len(chunk)
                    body += chunk
                    if not message.get("more_body", False):
                        return body
        except TimeoutError:
            raise Refused(
                408, f"request body not received within {self.body_timeout_s:g} s"
            ) from None
        finally:
            if counted:
                self.unverified -= len(body)
