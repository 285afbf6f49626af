"""Secrets: resolved late, remembered, and scrubbed from every log line, artifact and record.

`secret('orders-dsn')` reads `KTLO_SECRET_ORDERS_DSN` or a Prefect Secret block named
`orders-dsn`. Every value resolved in this process is registered, and `redact()` replaces it
(and its URL-encoded form) with `***` wherever ktlo writes text: logs (through a log-record
factory, so Prefect's own handlers see scrubbed records), artifacts, the store and errors.

ktlo's own secrets in the environment (the webhook token, the audit key, every
`KTLO_SECRET_*`, Prefect's API key, the store's password) are registered too, resolved or
not, and a step's process does not inherit them (`child_environment()`): a runbook that
wants one in a command passes it with `env: {NAME: "{{ secret('name') }}"}`.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from ktlo.errors import KtloError

MASK = "***"
_MIN_LEN = 3
SECRET_ENV_PREFIX = "KTLO_SECRET_"  # noqa: S105 (a name prefix)
SECRET_ENV_NAMES = frozenset(
    {
        "KTLO_WEBHOOK_TOKEN",
        "KTLO_AUDIT_KEY",
        "KTLO_CHANNELS",  # channel URLs carry tokens; they are registered when resolved
        "PREFECT_API_KEY",
        "PREFECT_API_AUTH_STRING",
    }
)
STORE_URL_ENV = "KTLO_DATABASE_URL"


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


def _url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def is_secret_env(name: str, value: str) -> bool:
    """Whether environment variable `name` holds one of ktlo's own secrets."""
    if name in SECRET_ENV_NAMES or name.startswith(SECRET_ENV_PREFIX):
        return True
    return name == STORE_URL_ENV and bool(_url_password(value))


def register_environment(environ: Mapping[str, str] | None = None) -> None:
    """Mask every secret ktlo's environment holds, whether or not a runbook resolves it."""
    for name, value in (os.environ if environ is None else environ).items():
        if not is_secret_env(name, value):
            continue
        if name == STORE_URL_ENV:
            password = _url_password(value) or ""
            register(password)
            register(unquote(password))
        else:
            register(value)


def child_environment() -> dict[str, str]:
    """The environment a step's process starts from: this process's, minus ktlo's secrets."""
    register_environment()
    return {k: v for k, v in os.environ.items() if not is_secret_env(k, v)}


def env_name(name: str) -> str:
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


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
    """Scrub secrets from every log record created in this process (idempotent).

    Called as a flow run starts, it also registers the secrets of the environment then.
    """
    global _installed
    register_environment()
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


register_environment()  # at process start: a secret is masked before anything can print it
