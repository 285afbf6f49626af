"""`command`: a local command's exit code and (up to 64 KiB of) output.

The command runs in its own process group, killed as a whole when the check times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from ktlo import secrets
from ktlo.fields import check_command, command_argv
from ktlo.processes import child_options
from tasks.health.checks.base import CheckBase, Facts
from tasks.health.facts import elapsed_ms

if TYPE_CHECKING:
    from tasks.health.prober import Prober

MAX_OUTPUT = 64 * 1024


class CommandCheck(CheckBase):
    type: Literal["command"]
    command: str | list[str]
    shell: bool = False
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    PLACEHOLDERS = {
        "exit_code": "number",
        "output": "text",
        "stderr": "string",
        "response_time_ms": "number",
    }
    DEFAULT_CONDITIONS = ("exit_code == 0",)

    @model_validator(mode="after")
    def _shape(self) -> CommandCheck:
        check_command(self.command, self.shell)
        return self

    def argv(self) -> list[str]:
        return command_argv(self.command, self.shell)

    def target(self) -> str:
        return self.command if isinstance(self.command, str) else " ".join(self.command)

    async def probe(self, prober: Prober, facts: Facts) -> None:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *self.argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=os.path.expanduser(self.cwd) if self.cwd else None,
            env={**secrets.child_environment(), **self.env},  # never ktlo's own secrets
            **child_options(),  # own process group (killed as a whole on timeout), dies with ktlo
        )
        try:
            out, err, _ = await asyncio.gather(_read(proc.stdout), _read(proc.stderr), proc.wait())
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        facts.update(
            exit_code=proc.returncode,
            output=secrets.redact(out.decode(errors="replace")),
            stderr=secrets.redact(err.decode(errors="replace")),
            response_time_ms=elapsed_ms(started),
        )


async def _read(stream: asyncio.StreamReader | None) -> bytes:
    if stream is None:
        return b""
    data = await stream.read(MAX_OUTPUT)
    while await stream.read(65536):  # drain the rest so the command never blocks on a pipe
        pass
    return data
