"""Field types shared by the runbook language, step inputs and domain models.

Each is defined once, so a time zone, an HTTP method, a URL or a command is checked the same
way, with the same message, wherever a runbook may write one.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
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


TimeZone = Annotated[str, AfterValidator(_timezone)]
HttpMethod = Annotated[
    Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"], BeforeValidator(_upper)
]
HttpUrl = Annotated[str, AfterValidator(_http_url)]


CommandSpec = str | Sequence[str | int | float]


def check_command(command: CommandSpec, shell: bool) -> None:
    """The shape of a command field (a step's or a check's): raises ValueError when wrong."""
    if shell and not isinstance(command, str):
        raise ValueError("shell: true needs the command as a string")
    if (isinstance(command, str) and not command.strip()) or not command:
        raise ValueError("command is empty")


def command_argv(command: CommandSpec, shell: bool) -> list[str]:
    """A command as argv: run by `sh -c` with shell, a string split as a shell would, a list
    as it is (numbers as text)."""
    if shell:
        return ["/bin/sh", "-c", str(command)]
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]
