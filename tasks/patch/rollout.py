"""`patch.rollout`: the approved plan, host by host, in batches, under ONE fleet-wide budget.

Unlike Ansible's per-batch `max_fail_percentage`, the budget counts failures over the whole
run: a batch in which every host failed does not stop the run while budget remains, and once
failures exceed `max_failed` no new host starts (hosts already running finish) and the step
fails with the report. A host counts as failed until its health gate passes: unreachable,
refused (plan changed), install failed, rolled back — all count.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from datetime import datetime
from typing import Any, Literal

from prefect import get_run_logger
from pydantic import BaseModel, Field, field_validator

from ktlo.errors import StepFailed
from ktlo.hosts.inventory import Host, load_inventory
from ktlo.hosts.runner import HostRunner
from ktlo.steps.context import get_step_context
from ktlo.steps.registry import StepOutput, step_task
from ktlo.store.models import utcnow
from tasks.patch import scan as scanning
from tasks.patch import store
from tasks.patch.gate import GateCheck
from tasks.patch.host_patch import HostPatch, HostReport, Shared
from tasks.patch.inputs import PatchCommon

PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def _count(value: int | str, total: int, *, at_least: int) -> int:
    if isinstance(value, int):
        return max(value, at_least)
    if value.strip().isdigit():
        return max(int(value), at_least)
    m = PERCENT.match(value)
    if m is None:
        raise ValueError(f"{value!r} is neither a number nor a percentage like '20%'")
    return max(math.floor(total * float(m.group(1)) / 100), at_least)


def batch_sizes(spec: list[int | str], total: int) -> list[int]:
    """`[1, 5, "20%"]` over `total` hosts: sizes until every host is in a batch (last repeats)."""
    sizes: list[int] = []
    left, i = total, 0
    while left > 0:
        size = min(_count(spec[min(i, len(spec) - 1)], total, at_least=1), left)
        sizes.append(size)
        left -= size
        i += 1
    return sizes


def _default_batches() -> list[int | str]:
    return [1, 5, "20%"]


class RolloutInput(PatchCommon):
    batches: list[int | str] = Field(default_factory=_default_batches, min_length=1)
    max_failed: int | str = Field(
        default=0, description="failures tolerated over the whole run: a number or 'N%'"
    )
    health: list[GateCheck] = Field(default_factory=list, description="per-host gate")
    soak_s: float = Field(default=0, ge=0, description="wait after a batch, then re-gate it")
    reboot: Literal["never", "if_needed", "always"] = "if_needed"
    max_concurrent_reboots: int = Field(default=1, ge=1)
    reboot_command: str = "reboot"
    boot_id_command: str = "cat /proc/sys/kernel/random/boot_id"
    reboot_timeout_s: float = Field(default=600, gt=0)
    reboot_poll_s: float = Field(default=1.0, gt=0)
    rollback: bool = Field(default=True, description="restore recorded versions on failure")
    install_timeout_s: float = Field(default=600, gt=0, description="one install or rollback")
    run_as: str | None = Field(default=None, description="install/reboot via sudo -n -u USER")
    window_end: datetime | None = Field(default=None, description="maintenance window end")
    cutoff_s: float = Field(default=0, ge=0, description="no host starts after window_end - this")
    lock_ttl_s: float = Field(default=6 * 3600, gt=0, description="a dead run's host lock expires")
    limit: int | None = Field(default=None, ge=1, description="only the first N hosts (a canary)")
    failed_before: int = Field(
        default=0, ge=0, description="failures already spent by an earlier rollout step of this run"
    )

    @field_validator("batches")
    @classmethod
    def _batches(cls, value: list[int | str]) -> list[int | str]:
        for item in value:
            _count(item, 100, at_least=1)
            if isinstance(item, int) and item < 1:
                raise ValueError("a batch has at least one host")
        return value

    @field_validator("max_failed")
    @classmethod
    def _budget(cls, value: int | str) -> int | str:
        _count(value, 100, at_least=0)
        if isinstance(value, int) and value < 0:
            raise ValueError("max_failed is 0 or more")
        return value


class RolloutHost(BaseModel):
    host: str
    outcome: str
    batch: int | None
    planned: list[str]
    installed: list[str]
    restored: dict[str, str]
    rebooted: bool
    health: str
    error: str | None
    duration_s: float


class BatchReport(BaseModel):
    index: int
    hosts: list[str]
    wall_s: float
    slowest_host_s: float
    failed: int


class RolloutOutput(StepOutput):
    hosts: list[RolloutHost]
    outcomes: dict[str, int]
    failed: int
    max_failed: int
    budget_spent: bool
    batches: list[BatchReport]
    overhead_s: float


def summarize(out: RolloutOutput) -> str:
    counts = ", ".join(f"{n} {o}" for o, n in sorted(out.outcomes.items()))
    return f"{counts}; failed {out.failed}/{out.max_failed} allowed" + (
        " — budget spent" if out.budget_spent else ""
    )


class Rollout:
    def __init__(self, inputs: RolloutInput, hosts: list[Host], run_id: str) -> None:
        self.inputs = inputs
        self.hosts = hosts
        self.run_id = run_id
        self.max_failed = _count(inputs.max_failed, len(hosts), at_least=0)
        self.failed_before = inputs.failed_before
        if inputs.limit is not None:
            self.hosts = hosts = hosts[: inputs.limit]
        self.reports = {h.name: HostReport(h.name) for h in hosts}
        self.batches: list[BatchReport] = []
        self.patchers: list[HostPatch] = []

    @property
    def failed(self) -> int:
        return self.failed_before + sum(r.counts_failed for r in self.reports.values())

    @property
    def budget_spent(self) -> bool:
        return self.failed > self.max_failed

    def _closed(self) -> str | None:
        end = self.inputs.window_end
        if end is not None and utcnow().timestamp() > end.timestamp() - self.inputs.cutoff_s:
            return (
                f"maintenance window closes at {end.isoformat()} (cutoff {self.inputs.cutoff_s:g}s)"
            )
        return None

    async def run(self) -> None:
        logger = get_run_logger()
        sizes = batch_sizes(list(self.inputs.batches), len(self.hosts))
        async with HostRunner(
            max_handshakes=self.inputs.max_handshakes,
            command_timeout_s=self.inputs.command_timeout_s,
            connect_timeout_s=self.inputs.connect_timeout_s,
            keep_for_run=True,  # a scan step before it has opened them already
        ) as runner:
            names = [h.name for h in self.hosts]
            shared = Shared(
                runner,
                asyncio.Semaphore(self.inputs.max_concurrent_reboots),
                self.run_id,
                scans=store.last_scans(names),
                seen=store.first_seen(),
            )
            try:
                await self._batches(sizes, shared, logger)
            finally:
                done = [p for p in self.patchers if p.touched]
                fresh = await asyncio.gather(*(p.rescan() for p in done))
                scanning.record_all(
                    [r for r in fresh if r is not None],
                    self.inputs.baseline,
                    self.run_id,
                    shared.seen,
                )

    async def _batches(self, sizes: list[int], shared: Shared, logger: Any) -> None:
        """Batch after batch while the budget and the window allow; hosts of a batch at once."""
        start = 0
        for index, size in enumerate(sizes, 1):
            batch = self.hosts[start : start + size]
            start += size
            why = "failure budget spent" if self.budget_spent else self._closed()
            if why is not None:
                logger.warning("batch %d and later not started: %s", index, why)
                for host in self.hosts[start - size :]:
                    self.reports[host.name].error = why
                break
            began = time.monotonic()
            patchers = [HostPatch(h, self.inputs, shared, self.reports[h.name]) for h in batch]
            self.patchers += patchers
            for p in patchers:
                p.report.batch = index
            mine = [h.name for h in batch]
            shared.locked = store.acquire(mine, self.run_id, self.inputs.lock_ttl_s)
            try:
                await asyncio.gather(*(p.run() for p in patchers))
                wall = time.monotonic() - began
                if self.inputs.soak_s and start < len(self.hosts) and not self.budget_spent:
                    await asyncio.sleep(self.inputs.soak_s)
                    await asyncio.gather(*(p.after_soak() for p in patchers))
            finally:
                store.release([n for n in mine if n not in shared.locked], self.run_id)
            self.batches.append(
                BatchReport(
                    index=index,
                    hosts=[h.name for h in batch],
                    wall_s=round(wall, 3),
                    slowest_host_s=round(max(p.report.remote_s for p in patchers), 3),
                    failed=sum(p.report.counts_failed for p in patchers),
                )
            )
            logger.info(
                "batch %d: %d hosts, %d failed; fleet %d failed of %d allowed",
                index,
                len(batch),
                self.batches[-1].failed,
                self.failed,
                self.max_failed,
            )

    def output(self) -> RolloutOutput:
        outcomes: dict[str, int] = {}
        for r in self.reports.values():
            outcomes[str(r.outcome)] = outcomes.get(str(r.outcome), 0) + 1
        return RolloutOutput(
            hosts=[
                RolloutHost(
                    host=r.host,
                    outcome=str(r.outcome),
                    batch=r.batch,
                    planned=r.planned,
                    installed=r.installed,
                    restored=r.restored,
                    rebooted=r.rebooted,
                    health=r.health,
                    error=r.error,
                    duration_s=round(r.remote_s, 3),
                )
                for r in self.reports.values()
            ],
            outcomes=outcomes,
            failed=self.failed,
            max_failed=self.max_failed,
            budget_spent=self.budget_spent,
            batches=self.batches,
            overhead_s=round(sum(b.wall_s - b.slowest_host_s for b in self.batches), 3),
        )


async def _artifact(out: RolloutOutput, run_id: str) -> None:
    """A Prefect table artifact of the rollout, one row per host (best effort: not in tests)."""
    from prefect.artifacts import acreate_table_artifact
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:
        return
    rows = [
        {
            "host": h.host,
            "outcome": h.outcome,
            "batch": h.batch,
            "installed": " ".join(h.installed),
            "restored": " ".join(f"{k}={v or '-'}" for k, v in h.restored.items()),
            "rebooted": h.rebooted,
            "error": h.error or "",
        }
        for h in out.hosts
    ]
    await acreate_table_artifact(
        table=rows,
        key=f"patch-rollout-{run_id[:8].lower()}",
        description=f"patch.rollout: {summarize(out)}",
    )


@step_task("patch.rollout", RolloutInput, RolloutOutput, summarize=summarize)
async def patch_rollout(inputs: RolloutInput) -> RolloutOutput:
    """Install the approved plan in batches with health gates, reboots, rollback and one budget."""
    ctx = get_step_context()
    run_id = ctx.run_id if ctx is not None else f"adhoc-{time.time_ns()}"
    hosts = load_inventory().select(inputs.hosts)
    rollout = Rollout(inputs, hosts, run_id)
    await rollout.run()
    out = rollout.output()
    await _artifact(out, run_id)
    if out.budget_spent:
        bad = [
            f"{h.host} {h.outcome}: {h.error}"
            for h in out.hosts
            if h.outcome in ("failed", "rolled_back")
        ]
        raise StepFailed(
            f"failure budget spent: {out.failed} hosts failed, {out.max_failed} allowed; "
            f"{out.outcomes.get('not_started', 0)} not started. " + " | ".join(bad)[:1500]
        )
    return out
