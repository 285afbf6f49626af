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

from ktlo.hosts.inventory import Host
from ktlo.hosts.runner import CommandResult, HostRunner


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
