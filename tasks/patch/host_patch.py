"""Patching one host: check the plan, record versions, install, reboot, gate, roll back.

Every step has a timeout (the runner's remote `timeout`), so nothing here can hang: a prompt,
a held dpkg lock or a dead sshd ends as a failed step with its reason.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ktlo.hosts.inventory import Host
from ktlo.hosts.record import audit_actions
from ktlo.hosts.runner import CommandResult, HostRunner
from ktlo.store.db import engine
from ktlo.store.models import utcnow
from tasks.patch import scan as scanning
from tasks.patch import store
from tasks.patch.gate import START as GATE_START
from tasks.patch.gate import gate_script, parse_gate, run_gate
from tasks.patch.model import Outcome, Update, plan_hash
from tasks.patch.providers import ProviderBase
from tasks.patch.providers.base import PLAN_CHANGED, PLAN_CHANGED_EXIT

if TYPE_CHECKING:
    from tasks.patch.rollout import RolloutInput


@dataclass
class HostReport:
    """What happened on one host (a row of the rollout's table and output)."""

    host: str
    outcome: Outcome = Outcome.NOT_STARTED
    batch: int | None = None
    planned: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)
    restored: dict[str, str] = field(default_factory=dict)
    rebooted: bool = False
    health: str = ""
    error: str | None = None
    remote_s: float = 0.0

    @property
    def counts_failed(self) -> bool:
        return self.outcome in (Outcome.FAILED, Outcome.ROLLED_BACK)


@dataclass
class Shared:
    """What the hosts of one rollout share: the runner, the reboot slots, the run id."""

    runner: HostRunner
    reboots: asyncio.Semaphore
    run_id: str
    scans: dict[str, store.PatchScan] = field(default_factory=dict)  # each host's last scan
    seen: dict[tuple[str, str, str], datetime] = field(default_factory=dict)
    locked: dict[str, str] = field(default_factory=dict)  # host -> the run holding it (not us)


class HostPatch:
    def __init__(self, host: Host, inputs: RolloutInput, shared: Shared, report: HostReport):
        self.host = host
        self.inputs = inputs
        self.shared = shared
        self.report = report
        self.restore: dict[tuple[str, str], str] = {}
        self.after: scanning.HostScan | None = None  # the scan run in the install's exec
        self.gated: tuple[bool, list[str]] | None = None  # the gate run in the install's exec
        self.settled = False  # the guarded install installs the host's whole pending plan
        self.events: list[tuple[str, CommandResult, dict[str, Any]]] = []
        self.providers: dict[str, ProviderBase] = {
            p.name_of(): p.for_host(host) for p in inputs.providers
        }

    async def run(self) -> HostReport:
        started = time.monotonic()
        held = self.shared.locked.get(self.host.name)
        if held is not None:
            self._end(Outcome.SKIPPED, f"another rollout ({held}) is working on this host")
            return self.report
        try:
            await self._patch()
        except Exception as exc:  # one host's surprise never stops the others: recorded
            self._end(Outcome.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            self.report.remote_s = time.monotonic() - started
            self._audit(
                "patch.outcome",
                self.host.name,
                None,
                outcome=str(self.report.outcome),
                installed=self.report.installed,
                restored=self.report.restored,
                rebooted=self.report.rebooted,
                reason=self.report.error,
            )
            state = {
                "outcome": str(self.report.outcome),
                "outcome_run_id": self.shared.run_id,
                **({"state": "Failed"} if self.report.counts_failed else {}),
                **({"error": self.report.error} if self.report.error else {}),
            }
            with engine().begin() as conn:  # the host's audit events and state: one transaction
                audit_actions(self.events, conn)
                store.save_states({self.host.name: state}, conn)
        return self.report

    def _audit(self, action: str, host: str, done: CommandResult | None, **details: object) -> None:
        """Kept until the host is done, then written in one transaction with its outcome."""
        result = done or CommandResult(host, 0, "", "", 0.0, None)
        self.events.append((action, result, dict(details)))

    def _end(self, outcome: Outcome, error: str | None = None) -> None:
        self.report.outcome = outcome
        self.report.error = error

    async def _patch(self) -> None:
        stored = self.shared.scans.get(self.host.name)
        if stored is None:
            return self._end(Outcome.FAILED, "never scanned: run patch.scan first")
        pending = [Update.model_validate(u) for u in stored.pending]
        pending = [u for u in pending if u.provider in self.providers]  # this rollout's only
        approved, _ = self.inputs.baseline.approve(pending, self.shared.seen, utcnow())
        self.report.planned = [u.pin for u in approved]
        if not approved:
            return self._end(Outcome.SKIPPED)  # compliant: nothing approved is pending
        guarded = self._guarded(pending, approved, stored.fingerprint or "")
        before: dict[str, dict[str, str]] = {}
        if guarded is None:
            now = await scanning.probe(
                self.shared.runner,
                self.host,
                list(self.inputs.providers),
                self.inputs.root,
                self.inputs.command_timeout_s,
            )
            if now.error is not None:
                return self._end(Outcome.FAILED, now.error)
            if now.plan_hash != plan_hash(pending):
                return self._refuse(stored, f"plan {plan_hash(pending)} -> {now.plan_hash}")
            before = now.installed
        else:  # the host checks the plan itself, in the install's exec: `current` is checked too
            unreachable = await self.shared.runner.check(self.host)  # the handshake, no exec
            if unreachable is not None:
                return self._end(Outcome.FAILED, unreachable)
            for u in pending:
                before.setdefault(u.provider, {})[u.name] = u.current or ""
        restore = self.restore = {  # also marks the host as touched
            (u.provider, u.name): before.get(u.provider, {}).get(u.name, "") for u in approved
        }
        failure = await self._install(approved, guarded)
        if failure == PLAN_CHANGED:
            self.restore = {}  # nothing was installed
            return self._refuse(stored, "checked on the host before installing")
        if failure is None and self.inputs.reboot != "never":
            failure = await self._reboot()
        if failure is None:
            passed, problems = self.gated or await run_gate(
                self.shared.runner, self.host, self.inputs.health
            )
            self.report.health = "passed" if passed else "; ".join(problems)
            failure = None if passed else "health gate failed: " + "; ".join(problems)
        if failure is None:
            self._end(Outcome.PATCHED)
        else:
            await self._rollback(restore, failure)
        return None

    def _guarded(self, pending: list[Update], approved: list[Update], fp: str) -> str | None:
        """The one-exec check-and-install command, when the host's only provider has one."""
        if len(self.providers) != 1:
            return None
        (provider,) = self.providers.values()
        self.settled = {u.pin for u in approved} == {u.pin for u in pending}
        return provider.guarded_install_command(pending, approved, fp)

    def _refuse(self, stored: store.PatchScan, how: str) -> None:
        self._audit(
            "patch.refused", self.host.name, None, reason=f"plan changed since scan ({how})"
        )
        return self._end(
            Outcome.FAILED,
            f"refused: the pending updates changed since the scan of {stored.scanned_at:%Y-%m-%d %H:%M} "
            f"({how}); scan again and review",
        )

    async def after_soak(self) -> None:
        """The batch gate: a patched host is checked again after the soak; failing, rolled back."""
        if self.report.outcome is not Outcome.PATCHED or not self.inputs.health:
            return
        passed, problems = await run_gate(self.shared.runner, self.host, self.inputs.health)
        if passed:
            return
        self.report.health = "; ".join(problems)
        await self._rollback(self.restore, "health gate failed after soak: " + "; ".join(problems))
        store.save_state(self.host.name, outcome=str(self.report.outcome), state="Failed")

    async def _install(self, approved: list[Update], guarded: str | None) -> str | None:
        """None when installed; PLAN_CHANGED when the guarded command refused; else why not."""
        for name, provider in self.providers.items():
            mine = [u for u in approved if u.provider == name]
            if not mine:
                continue
            root = scanning.host_root(self.host, self.inputs.root)
            # the gate too, when nothing comes between install and gate and it runs as we do
            fold = self.inputs.reboot == "never" and self.inputs.run_as is None
            gate = gate_script(self.inputs.health) if fold and self.inputs.health else "true"
            done = await self.shared.runner.run(
                self.host,
                scanning.then_scan(guarded, provider, root, gate, settled=self.settled)
                if guarded
                else provider.install_command(mine),
                timeout_s=self.inputs.install_timeout_s,
                run_as=self.inputs.run_as,
            )
            if guarded:
                head, _, gated = done.stdout.partition(GATE_START + "\n")
                if gated and done.ok:
                    self.gated = parse_gate(gated, self.inputs.health)
                done, self.after = scanning.split_scan(replace(done, stdout=head), provider)
                if self.after is not None and self.settled and not _landed(self.after, mine):
                    self.after = None  # not what was planned: a full rescan at the end says why
            if (
                guarded is not None
                and done.exit_code == PLAN_CHANGED_EXIT
                and done.stdout.startswith(PLAN_CHANGED)
            ):
                return PLAN_CHANGED
            self._audit("patch.install", self.host.name, done, packages=[u.pin for u in mine])
            if not done.ok:
                return f"install failed: {done.summary()}"
            self.report.installed += [u.pin for u in mine]
        return None

    async def _reboot(self) -> str | None:
        runner, host = self.shared.runner, self.host
        if self.inputs.reboot == "if_needed":
            if self.after is not None:  # the install's exec read the facts already
                needed = self.after.reboot_required
            else:
                facts = await runner.run(
                    host, scanning.facts_command(scanning.host_root(host, self.inputs.root))
                )
                needed = not facts.ok or scanning.parse_facts(facts.stdout)[0]
            if not needed:
                return None
        self.after = None  # a reboot changes the facts: rescan after it
        async with self.shared.reboots:
            boot = await runner.run(host, self.inputs.boot_id_command, timeout_s=30)
            if not boot.ok:
                return f"cannot read the boot id: {boot.summary()}"
            done = await runner.run(
                host, self.inputs.reboot_command, timeout_s=30, run_as=self.inputs.run_as
            )
            self._audit("patch.reboot", host.name, done, boot_id=boot.stdout.strip())
            runner.forget(host)
            deadline = time.monotonic() + self.inputs.reboot_timeout_s
            while time.monotonic() < deadline:
                await asyncio.sleep(self.inputs.reboot_poll_s)
                now = await runner.run(host, self.inputs.boot_id_command, timeout_s=10)
                if now.ok and now.stdout.strip() and now.stdout.strip() != boot.stdout.strip():
                    after = await runner.run(host, "true", timeout_s=10)
                    if after.ok:
                        self.report.rebooted = True
                        return None
                if not now.ok:
                    runner.forget(host)
            return f"no new boot id within {self.inputs.reboot_timeout_s:g}s after reboot"

    async def _rollback(self, restore: dict[tuple[str, str], str], failure: str) -> None:
        self.after = None  # the versions change again: rescan after it
        if not self.inputs.rollback:
            return self._end(Outcome.FAILED, failure)
        runner = self.shared.runner
        errors: list[str] = []
        for name, provider in self.providers.items():
            versions = {pkg: old for (prov, pkg), old in restore.items() if prov == name}
            if not versions:
                continue
            done = await runner.run(
                self.host,
                provider.rollback_command(versions),
                timeout_s=self.inputs.install_timeout_s,
                run_as=self.inputs.run_as,
            )
            self._audit("patch.rollback", self.host.name, done, versions=versions)
            check = await runner.run(self.host, provider.versions_command())
            now = provider.parse_versions(check.stdout) if check.ok else {}
            wrong = {p: now.get(p, "") for p, v in versions.items() if now.get(p, "") != v}
            if not done.ok or wrong:
                errors.append(
                    f"rollback incomplete on {name}: {done.summary()} {wrong or ''}".strip()
                )
            else:
                self.report.restored.update(versions)
        if errors:
            return self._end(Outcome.FAILED, f"{failure}; " + "; ".join(errors))
        passed, problems = await run_gate(runner, self.host, self.inputs.health)
        note = (
            "" if passed else " (health still failing after rollback: " + "; ".join(problems) + ")"
        )
        self._end(Outcome.ROLLED_BACK, failure + note)
        return None

    @property
    def touched(self) -> bool:
        return bool(self.restore)

    async def rescan(self) -> scanning.Recording | None:
        """What the host has now, to record so its state and later drift start from here.

        The rollout runs it for every touched host after the last batch, all at once, and
        stores the results in one go: a batch does not wait for its hosts' rescans. A host
        patched by a guarded install was scanned in the install's own exec (nothing changed
        since: no reboot, no rollback), so only its result is stored.
        """
        fresh = self.after or await scanning.probe(
            self.shared.runner,
            self.host,
            list(self.inputs.providers),
            self.inputs.root,
            self.inputs.command_timeout_s,
        )
        if fresh.error is not None:
            return None
        return scanning.Recording(
            fresh,
            str(self.report.outcome),
            self.shared.scans.get(self.host.name),
            frozenset(self.restore),
        )


def _landed(scan: scanning.HostScan, updates: list[Update]) -> bool:
    """Every update is installed at its planned version (what a settled scan presumes)."""
    installed = scan.installed
    return all(installed.get(u.provider, {}).get(u.name) == u.version for u in updates)
