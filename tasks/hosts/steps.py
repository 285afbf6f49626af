"""The `host.run` step: one shell command on a selection of inventory hosts, at once.

`{{ }}` values in the command are passed as environment variables exported (quoted) inside
the remote command line and referenced from it, so a hostile value stays one word. Each
host's result is in the output; the step fails when more hosts failed than `allow_failed`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import get_run_logger
from pydantic import BaseModel, Field

from ktlo.errors import StepFailed
from ktlo.hosts.inventory import load_inventory
from ktlo.hosts.record import audit_hosts
from ktlo.hosts.runner import HostRunner
from ktlo.steps.registry import StepInput, StepOutput, step_task
from ktlo.steps.renderings import AsShell, Rendering


class HostRunInput(StepInput):
    hosts: str = Field(description="host selector: all, a group, a host, or a comma list")
    command: str = Field(description="shell command run on each host (sh -c)")
    env: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="set inside the command line, after the host's env"
    )
    stdin: str | None = None
    run_as: str | None = Field(default=None, description="run via sudo -n -u USER")
    timeout_s: float = Field(default=60.0, gt=0, description="per host; killed on the host")
    connect_timeout_s: float | None = Field(default=None, gt=0)
    expect_exit: list[int] = Field(default_factory=lambda: [0])
    allow_failed: int = Field(
        default=0, ge=0, description="hosts that may fail without failing the step"
    )
    max_handshakes: int = Field(default=16, ge=1)

    @classmethod
    def renderings(cls, raw: Mapping[str, Any]) -> Mapping[str, Rendering]:
        return {"command": AsShell(variables="env")}


class HostResult(BaseModel):
    host: str
    ok: bool
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    error: str | None = None


class HostRunOutput(StepOutput):
    results: list[HostResult]
    ok: list[str]
    failed: list[str]


def summarize(out: HostRunOutput) -> str:
    return f"{len(out.ok)} ok, {len(out.failed)} failed" + (
        f" ({', '.join(out.failed[:5])})" if out.failed else ""
    )


@step_task("host.run", HostRunInput, HostRunOutput, summarize=summarize)
async def host_run(inputs: HostRunInput) -> HostRunOutput:
    """Run a command on inventory hosts over SSH; per-host results, one audit event per host."""
    logger = get_run_logger()
    hosts = load_inventory().select(inputs.hosts)
    env = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in inputs.env.items()}
    async with HostRunner(
        max_handshakes=inputs.max_handshakes,
        command_timeout_s=inputs.timeout_s,
        connect_timeout_s=inputs.connect_timeout_s,
    ) as runner:
        done = await runner.run_many(
            hosts, inputs.command, env=env, stdin=inputs.stdin, run_as=inputs.run_as
        )
    audit_hosts("host.run", done, {"command": inputs.command, "run_as": inputs.run_as})
    results = [
        HostResult(
            host=r.host,
            ok=r.error is None and r.exit_code in inputs.expect_exit,
            **{k: v for k, v in r.as_dict().items() if k != "host"},
        )
        for r in done
    ]
    out = HostRunOutput(
        results=results,
        ok=[r.host for r in results if r.ok],
        failed=[r.host for r in results if not r.ok],
    )
    for r, raw in zip(results, done, strict=True):
        if not r.ok:
            logger.warning("%s", raw.summary())
    if len(out.failed) > inputs.allow_failed:
        raise StepFailed(
            f"{len(out.failed)} of {len(results)} hosts failed: "
            + "; ".join(raw.summary() for raw, r in zip(done, results, strict=True) if not r.ok)[
                :800
            ]
        )
    return out
