"""A failed probe as one line an operator can act on: never a traceback, never a secret."""

from __future__ import annotations

import re
import socket
import ssl
from typing import Any

import httpx

from ktlo import secrets

_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def _root_cause(exc: BaseException) -> BaseException:
    """The OS-level error under library wrappers (httpx → httpcore → ConnectionRefusedError)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ConnectionRefusedError | socket.gaierror | ssl.SSLError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return exc


def describe_error(exc: BaseException) -> str:
    """One line an operator can act on; credentials in URLs and secret values removed."""
    exc = _root_cause(exc)
    if isinstance(exc, httpx.TimeoutException):
        text = "timed out"
    elif isinstance(exc, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(exc, socket.gaierror):
        text = f"cannot resolve host: {exc.strerror or exc}"
    elif isinstance(exc, ssl.SSLError):
        text = f"TLS error: {exc.reason or exc}"
    else:
        args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
        pymysql_style = (  # (2003, "Can't connect…")
            len(args) == 2 and isinstance(args[0], int) and not isinstance(exc, OSError)
        )
        detail = str(args[1] if pymysql_style else exc).strip()
        detail = detail.removeprefix("connection failed: ")
        first = next((line.strip() for line in detail.splitlines() if line.strip()), "")
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return secrets.redact(_USERINFO.sub("***@", text))
