"""Secrets: resolved late, remembered, and scrubbed from every log line, artifact and record.

`secret('orders-dsn')` reads `KTLO_SECRET_ORDERS_DSN` or a Prefect Secret block named
`orders-dsn`. Every value resolved in this process is registered, and `redact()` replaces it
(and its URL-encoded form) with `***` wherever ktlo writes text: logs (through a log-record
factory, so Prefect's own handlers see scrubbed records), artifacts, the store and errors.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus

from ktlo.errors import KtloError

MASK = "***"
_MIN_LEN = 3


class SecretNotFound(KtloError):
    pass


class _Registry:
    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        if not value or len(value) < _MIN_LEN:
            return
        variants = {value, quote(value, safe=""), quote_plus(value)}
        with self._lock:
            if variants <= self._values:
                return
            self._values |= variants
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)

    @property
    def active(self) -> bool:
        return self._pattern is not None


_registry = _Registry()


def register(value: str) -> None:
    """Treat `value` as secret from now on in this process."""
    _registry.add(value)


def redact(value: Any) -> Any:
    """Scrub secret values from a string or, recursively, from lists and mappings."""
    if not _registry.active:
        return value
    if isinstance(value, str):
        return _registry.redact(value)
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def env_name(name: str) -> str:
    return "KTLO_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def resolve(name: str) -> str:
    """The value of secret `name`: environment first, then a Prefect Secret block."""
    value = os.environ.get(env_name(name))
    if value is None:
        value = _from_prefect_block(name)
    if value is None:
        raise SecretNotFound(
            f"secret '{name}' not found: set {env_name(name)} or create a Prefect Secret "
            f"block named '{name}'"
        )
    register(value)
    return value


def _from_prefect_block(name: str) -> str | None:
    try:
        from prefect.blocks.system import Secret
    except ImportError:  # pragma: no cover - prefect is a dependency
        return None
    try:
        block: Any = Secret.load(name, _sync=True)  # type: ignore[call-arg]
    except ValueError:
        return None
    except Exception:  # the API is down: treat as not found, the message says where to look
        return None
    value = block.get()
    return value if isinstance(value, str) else str(value)


_installed = False


def install_log_redaction() -> None:
    """Scrub secrets from every log record created in this process (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _registry.active:
            message = record.getMessage()
            scrubbed = _registry.redact(message)
            if scrubbed != message:
                record.msg, record.args = scrubbed, ()
            if record.exc_info and not record.exc_text:
                record.exc_text = _registry.redact(
                    logging.Formatter().formatException(record.exc_info)
                )
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
