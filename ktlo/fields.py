"""Field types shared by the runbook language, step inputs and domain models.

Each is defined once, so a time zone, an HTTP method, a URL or a command is checked the same
way, with the same message, wherever a runbook may write one.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {value!r}") from None
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _http_url(value: str) -> str:
    """Templated URLs are checked again after rendering, when the step runs."""
    if "{{" not in value and not value.startswith(("http://", "https://")):
        raise ValueError("url must start with http:// or https://")
    return value


def _command(value: str | list[str | int | float]) -> str | list[str | int | float]:
    if (isinstance(value, str) and not value.strip()) or (isinstance(value, list) and not value):
        raise ValueError("command is empty")
    return value


TimeZone = Annotated[str, AfterValidator(_timezone)]
HttpMethod = Annotated[
    Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"], BeforeValidator(_upper)
]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Command = Annotated[str | list[str | int | float], AfterValidator(_command)]


def argv_of(command: str | list[str | int | float]) -> list[str]:
    """A command as argv: a list as it is (numbers as text), a string split as a shell would."""
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]
