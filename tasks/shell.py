"""The `shell` step: run a local command, stream its output to the run log, check its exit code.

No shell is involved unless the command is a string and `shell: true`; a string command
without `shell` is split like a POSIX shell would split it, before its templates are
rendered, so a value stays one argument. In a `shell: true` command every `{{ }}` value is
passed as an environment variable and referenced from the script, so it is never read as
shell code (ktlo.runbook.shelltemplate). The command runs in its own process group, so a timeout or
cancellation kills everything it started; it does not inherit ktlo's own secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from pydantic import Field, model_validator

from ktlo import secrets
from ktlo.errors import StepFailed
from ktlo.fields import check_command, command_argv
from ktlo.processes import child_options
from ktlo.runbook.templating import is_template
from ktlo.steps.registry import StepInput, StepOutput, step_task
from ktlo.steps.renderings import AsShell, AsWords, Rendering

HEAD_BYTES = 16 * 1024
TAIL_BYTES = 48 * 1024
MAX_LOGGED_LINES = 500


class ShellInput(StepInput):
    command: str | list[str | int | float] = Field(
        description="argv list, or a string (split; or run by sh with shell: true)"
    )
    shell: bool = False
    cwd: str | None = None
    env: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="added to the inherited environment (which never holds ktlo's own secrets)",
    )
    inherit_env: bool = True
    stdin: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    expect_exit: list[int] = Field(default_factory=lambda: [0])

    @model_validator(mode="after")
    def _shape(self) -> ShellInput:
        check_command(self.command, self.shell)
        return self

    @classmethod
    def renderings(cls, raw: Mapping[str, Any]) -> Mapping[str, Rendering]:
        if raw.get("shell") is True:
            return {"command": AsShell(variables="env")}
        return {"command": AsWords()}

    def argv(self) -> list[str]:
        return command_argv(self.command, self.shell)


class ShellOutput(StepOutput):
    exit_code: int
    stdout: str
    stderr: str
    duration_ms: float


class _Capture:
    """Keeps the head and the tail of a stream; the middle of a huge output is dropped."""

    def __init__(self) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = HEAD_BYTES - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > TAIL_BYTES:
                cut = len(self.tail) - TAIL_BYTES
                self.dropped += cut
                del self.tail[:cut]

    def text(self) -> str:
        head = self.head.decode(errors="replace")
        tail = self.tail.decode(errors="replace")
        if self.dropped:
            return f"{head}\n… [{self.dropped} bytes truncated] …\n{tail}"
        return head + tail


def summarize(out: ShellOutput) -> str:
    last = (out.stdout.strip().splitlines() or [""])[-1]
    return f"exit {out.exit_code}" + (f": {last[:100]}" if last else "")


async def _pump(
    stream: asyncio.StreamReader, capture: _Capture, name: str, counter: list[int]
) -> None:
    logger = get_run_logger()
    while True:
        line = await stream.readline()
        if not line:
            return
        capture.add(line)
        counter[0] += 1
        if counter[0] <= MAX_LOGGED_LINES:
            logger.info("%s| %s", name, line.decode(errors="replace").rstrip("\n"))
        elif counter[0] == MAX_LOGGED_LINES + 1:
            logger.info("… further output is not logged (it is kept in the step result)")


def _kill_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    _kill_group(proc, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout=3)
    except TimeoutError:
        _kill_group(proc, signal.SIGKILL)
        await proc.wait()


def check(data: dict[str, Any], runbook: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """`shell:` decides how the command is read, so it must be written, not computed."""
    if is_template(data.get("shell")):
        return [(("shell",), "shell must be true or false, not a template")]
    return []


@step_task("shell", ShellInput, ShellOutput, summarize=summarize, validate=check)
async def run_command(inputs: ShellInput) -> ShellOutput:
    """Run a local command and fail on an unexpected exit code."""
    argv = inputs.argv()
    env = (
        secrets.child_environment()
        if inputs.inherit_env
        else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    )
    env.update({k: str(v) for k, v in inputs.env.items()})
    cwd = Path(inputs.cwd).expanduser() if inputs.cwd else None
    if cwd is not None and not cwd.is_dir():
        raise StepFailed(f"cwd {cwd} is not a directory")
    started = time.perf_counter()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE
            if inputs.stdin is not None
            else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            **child_options(),
        )
    except FileNotFoundError:
        raise StepFailed(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise StepFailed(f"permission denied: {argv[0]}") from None
    out, err, lines = _Capture(), _Capture(), [0]
    assert proc.stdout is not None
    assert proc.stderr is not None
    try:
        if inputs.stdin is not None and proc.stdin is not None:
            proc.stdin.write(inputs.stdin.encode())
            await proc.stdin.drain()
            proc.stdin.close()
        await asyncio.wait_for(
            asyncio.gather(
                _pump(proc.stdout, out, "stdout", lines),
                _pump(proc.stderr, err, "stderr", lines),
                proc.wait(),
            ),
            timeout=inputs.timeout_s,
        )
    except TimeoutError:
        await _terminate(proc)
        raise StepFailed(f"command timed out after {inputs.timeout_s:g}s and was killed") from None
    except BaseException:
        await asyncio.shield(_terminate(proc))
        raise
    result = ShellOutput(
        exit_code=proc.returncode if proc.returncode is not None else -1,
        stdout=secrets.redact(out.text()),
        stderr=secrets.redact(err.text()),
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    if result.exit_code not in inputs.expect_exit:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-3:]
        expected = ", ".join(map(str, inputs.expect_exit))
        raise StepFailed(
            f"exit code {result.exit_code} (expected {expected})"
            + (": " + " | ".join(detail) if detail else "")
        )
    return result
