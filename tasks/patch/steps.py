"""The patch domain's step types: `patch.scan` (read-only) and `patch.rollout`."""

from __future__ import annotations

import asyncio

from prefect import get_run_logger
from pydantic import BaseModel

from ktlo.hosts.inventory import load_inventory
from ktlo.hosts.record import audit_hosts
from ktlo.hosts.runner import CommandResult, HostRunner
from ktlo.steps.context import get_step_context
from ktlo.steps.registry import StepOutput, step_task
from tasks.patch import rollout as _rollout  # noqa: F401 - registers patch.rollout
from tasks.patch import scan as scanning
from tasks.patch import store
from tasks.patch.inputs import PatchCommon


class ScanInput(PatchCommon):
    pass


class HostScanReport(BaseModel):
    host: str
    state: str
    error: str | None = None
    pending: int
    approved: list[str]
    rejected: dict[str, str]
    security: list[str]
    reboot_required: bool
    plan_hash: str
    drift: list[str]


class ScanOutput(StepOutput):
    hosts: list[HostScanReport]
    states: dict[str, int]


def summarize(out: ScanOutput) -> str:
    return f"{len(out.hosts)} hosts: " + ", ".join(
        f"{n} {s}" for s, n in sorted(out.states.items())
    )


def _report(scan: scanning.HostScan) -> HostScanReport:
    return HostScanReport(
        host=scan.host,
        state=str(scan.state),
        error=scan.error,
        pending=len(scan.pending),
        approved=[u.pin for u in scan.approved],
        rejected=scan.rejected,
        security=[u.pin for u in scan.pending if u.security],
        reboot_required=scan.reboot_required,
        plan_hash=scan.plan_hash,
        drift=scan.drift,
    )


async def scan_hosts(inputs: PatchCommon, run_id: str | None) -> list[scanning.HostScan]:
    """Scan the selected hosts at once, store each result, audit each host."""
    hosts = load_inventory().select(inputs.hosts)
    previous = store.last_scans([h.name for h in hosts])
    async with HostRunner(
        max_handshakes=inputs.max_handshakes,
        command_timeout_s=inputs.command_timeout_s,
        connect_timeout_s=inputs.connect_timeout_s,
        keep_for_run=True,  # the run's rollout step uses the same connections
    ) as runner:
        probes = await asyncio.gather(
            *(
                scanning.probe(
                    runner,
                    h,
                    list(inputs.providers),
                    inputs.root,
                    inputs.command_timeout_s,
                    previous.get(h.name),
                )
                for h in hosts
            )
        )
    outcomes = {s.host: s.outcome for s in store.states()}
    seen = store.first_seen()
    scans = scanning.record_all(
        [scanning.Recording(p, outcomes.get(p.host), previous.get(p.host)) for p in probes],
        inputs.baseline,
        run_id,
        seen,
    )
    audit_hosts(
        "patch.scan",
        [
            CommandResult(s.host, 0 if s.error is None else None, "", "", 0.0, s.error)
            for s in scans
        ],
        {"providers": [p.name_of() for p in inputs.providers]},
    )
    return scans


@step_task("patch.scan", ScanInput, ScanOutput, summarize=summarize)
async def patch_scan(inputs: ScanInput) -> ScanOutput:
    """Scan hosts for pending updates (changes nothing); store each host's plan and state."""
    ctx = get_step_context()
    scans = await scan_hosts(inputs, ctx.run_id if ctx else None)
    logger = get_run_logger()
    for s in scans:
        if s.error:
            logger.warning("%s: scan failed: %s", s.host, s.error)
    counts: dict[str, int] = {}
    for s in scans:
        counts[str(s.state)] = counts.get(str(s.state), 0) + 1
    return ScanOutput(hosts=[_report(s) for s in scans], states=counts)
