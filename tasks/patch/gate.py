"""The per-host health gate: check definitions in `health.sweep`'s format, run on the host.

Only `command` checks are accepted: on a patched host they run over SSH with the host's env,
and pass on exit status 0 (or one of `expect_exit`). The format is the health domain's, the
code is not shared: the patch domain may not import tasks.health, and the sweep's prober
(state machine, alerting, notifications) is not what a gate wants; a gate is a command's
exit status on the host that was just changed. Network checks of a service belong in a
`health.sweep` step after the rollout (or between an approval and the next batch).
"""

from __future__ import annotations

import shlex
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ktlo import secrets
from ktlo.hosts.inventory import Host
from ktlo.hosts.runner import TIMED_OUT, CommandResult, HostRunner, command_line

START = "@@ktlo-gate@@"
RESULT = "@@ktlo-gate-rc@@"


class GateCheck(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["command"] = Field(description="only command checks run on a patched host")
    name: str | None = None
    command: str | list[str]
    shell: bool = Field(default=True, description="a string command is run by sh on the host")
    env: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=30, gt=0)
    expect_exit: list[int] = Field(default_factory=lambda: [0])

    @model_validator(mode="before")
    @classmethod
    def _only_command(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") not in (None, "command"):
            raise ValueError(
                f"a patch health gate runs `command` checks on the host, not {data['type']!r}; "
                "run other checks with a health.sweep step"
            )
        return data

    @property
    def label(self) -> str:
        return self.name or self.line[:60]

    @property
    def line(self) -> str:
        return self.command if isinstance(self.command, str) else shlex.join(self.command)


async def run_gate(
    runner: HostRunner, host: Host, checks: list[GateCheck]
) -> tuple[bool, list[str]]:
    """(passed, one line per failed check). No checks: passed."""
    problems: list[str] = []
    for check in checks:
        done: CommandResult = await runner.run(
            host, check.line, env=check.env, timeout_s=check.timeout_s
        )
        if done.error is not None or done.exit_code not in check.expect_exit:
            problems.append(f"health check {check.label!r}: {done.summary()}")
    return not problems, problems


def gate_script(checks: list[GateCheck]) -> str:
    """The gate as a tail for an install's exec: each check under its own env and timeout,
    its exit status and last output line after `RESULT` (read by `parse_gate`)."""
    parts = [f"echo {START}", "nl='\n'"]  # the last line by parameter expansion: no processes
    for check in checks:
        line = command_line(check.line, check.env, timeout_s=check.timeout_s)
        parts.append(
            f'out=$( {{ {line}\n}} 2>&1 ); grc=$?; printf "%s %s %.200s\\n" {RESULT} "$grc" '
            '"${out##*$nl}"'
        )
    return "; ".join(parts)


def parse_gate(text: str, checks: list[GateCheck]) -> tuple[bool, list[str]] | None:
    """`run_gate`'s answer from `gate_script`'s output; None when it is not all there."""
    rows = [line.split(" ", 2) for line in text.splitlines() if line.startswith(RESULT + " ")]
    if len(rows) != len(checks) or not all(r[1].isdigit() for r in rows):
        return None
    problems = [
        secrets.redact(f"health check {check.label!r}: {_why(check, int(row[1]), row[2:])}")
        for check, row in zip(checks, rows, strict=True)
        if int(row[1]) not in check.expect_exit
    ]
    return not problems, problems


def _why(check: GateCheck, code: int, last: list[str]) -> str:
    if code in TIMED_OUT:
        return f"timed out after {check.timeout_s:g}s (killed)"
    return f"exit {code}" + (f": {last[0]}" if last and last[0] else "")
