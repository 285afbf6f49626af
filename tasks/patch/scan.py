"""Scanning a host: every provider's read-only command plus reboot/needrestart facts, at once
on the host's one connection; the result is stored with the hash of its pending plan."""

from __future__ import annotations

import asyncio
import dataclasses
import shlex
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ktlo.hosts.inventory import Host
from ktlo.hosts.runner import CommandResult, HostRunner
from ktlo.store.models import utcnow
from tasks.patch import store
from tasks.patch.baseline import Baseline
from tasks.patch.compliance import drift, state_of
from tasks.patch.model import Compliance, ProviderScan, Update, plan_hash
from tasks.patch.providers import ProviderBase
from tasks.patch.providers.base import for_host

MARK = "@@ktlo-facts@@"
AFTER = "@@ktlo-after@@"


def facts_command(root: str) -> str:
    """reboot-required(.pkgs) under the host's root, and `needrestart -b` where installed."""
    base = shlex.quote(root.rstrip("/") + "/var/run/reboot-required")
    return (
        f"if [ -e {base} ]; then echo reboot; cat {base}.pkgs 2>/dev/null; fi; echo {MARK}; "
        "if command -v needrestart >/dev/null 2>&1; then needrestart -b 2>/dev/null; fi; true"
    )


def host_root(host: Host, root: str | None) -> str:
    """Where the host's filesystem starts: `root` ({vars.NAME} allowed), else `vars.root`, else /."""
    if root is None:
        return str(host.vars.get("root", ""))
    return for_host(root, host)


def parse_facts(stdout: str) -> tuple[bool, list[str], dict[str, Any]]:
    head, _, tail = stdout.partition(MARK)
    lines = [x.strip() for x in head.splitlines() if x.strip()]
    reboot = bool(lines) and lines[0] == "reboot"
    packages = sorted(set(lines[1:])) if reboot else []
    needrestart: dict[str, Any] = {}
    for line in tail.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.startswith("NEEDRESTART-"):
            name = key.removeprefix("NEEDRESTART-").lower()
            if name == "svc":
                needrestart.setdefault("services", []).append(value.strip())
            else:
                needrestart[name] = value.strip()
    if needrestart.get("kstat") in ("2", "3"):
        reboot = True
    return reboot, packages, needrestart


@dataclass
class HostScan:
    """One host's scan, approved plan and state (what the steps report)."""

    host: str
    error: str | None = None
    providers: list[ProviderScan] = field(default_factory=list)
    pending: list[Update] = field(default_factory=list)
    approved: list[Update] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    reboot_required: bool = False
    reboot_packages: list[str] = field(default_factory=list)
    needrestart: dict[str, Any] = field(default_factory=dict)
    plan_hash: str = ""
    state: Compliance = Compliance.NOT_APPLICABLE
    scan_id: int | None = None
    drift: list[str] = field(default_factory=list)

    @property
    def installed(self) -> dict[str, dict[str, str]]:
        return {p.provider: p.installed for p in self.providers}

    @property
    def fingerprint(self) -> str:
        """The one provider's (the guarded install exists for one provider only)."""
        return self.providers[0].fingerprint if len(self.providers) == 1 else ""


async def probe(
    runner: HostRunner,
    host: Host,
    providers: list[ProviderBase],
    root: str | None,
    timeout_s: float,
    previous: store.PatchScan | None = None,
) -> HostScan:
    """Run the scan commands on one host (no store access): nothing on the host changes.

    With the host's `previous` scan, a provider that can tell its inputs did not change since
    answers `unchanged`, and that scan's installed and pending lists are taken again.
    """
    configured = [p.for_host(host) for p in providers]
    if len(configured) == 1:  # the usual case: scan and facts in one exec (one sshd session)
        provider, root_dir = configured[0], host_root(host, root)
        since = _reusable(previous, provider)
        done = await runner.run(
            host, scan_and_facts(provider, root_dir, since=since), timeout_s=timeout_s
        )
        if done.error is not None:
            return HostScan(host=host.name, error=done.error)
        scan = _parse_combined(done, done.stdout, provider)
        if scan is not None and previous is not None and since:
            _take_unchanged(scan, previous, since)
        return scan or HostScan(host=host.name, error=f"unreadable scan: {done.summary()}")
    jobs = [runner.run(host, p.scan_command(), timeout_s=timeout_s) for p in configured]
    jobs.append(runner.run(host, facts_command(host_root(host, root)), timeout_s=timeout_s))
    results: list[CommandResult] = list(await asyncio.gather(*jobs))
    return parse_probe(host.name, configured, results)


def _reusable(previous: store.PatchScan | None, provider: ProviderBase) -> str:
    """The previous scan's fingerprint, when its result may be taken again for `provider`."""
    if previous is None or previous.error or not previous.fingerprint:
        return ""
    if set(previous.installed) != {provider.name_of()}:
        return ""
    return previous.fingerprint


def _take_unchanged(scan: HostScan, previous: store.PatchScan, fingerprint: str) -> None:
    """Fill a provider's `unchanged` answer with the previous scan's lists."""
    for i, found in enumerate(scan.providers):
        if not found.unchanged:
            continue
        name = found.provider
        scan.providers[i] = ProviderScan(
            provider=name,
            installed=dict(previous.installed.get(name, {})),
            pending=[Update.model_validate(u) for u in previous.pending if u["provider"] == name],
            fingerprint=fingerprint,
        )
    scan.pending = [u for p in scan.providers for u in p.pending]
    scan.plan_hash = plan_hash(scan.pending)


def parse_probe(
    name: str, configured: list[ProviderBase], results: list[CommandResult]
) -> HostScan:
    """A HostScan from each provider's scan result, then the facts command's."""
    out = HostScan(host=name)
    for provider, done in zip(configured, results, strict=False):
        if done.error is not None:
            out.error = done.error
            return out
        if done.exit_code != 0:
            err = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
            out.providers.append(
                ProviderScan(
                    provider=provider.name_of(),
                    applicable=done.exit_code != 127,
                    error=f"exit {done.exit_code}: {err[0][:300]}",
                )
            )
            continue
        out.providers.append(provider.parse_scan(done.stdout))
    facts = results[-1]
    out.reboot_required, out.reboot_packages, out.needrestart = parse_facts(facts.stdout)
    errors = [p.error for p in out.providers if p.error and p.applicable]
    if errors:
        out.error = "; ".join(e for e in errors if e)
    out.pending = [u for p in out.providers for u in p.pending]
    out.plan_hash = plan_hash(out.pending)
    return out


def scan_and_facts(
    provider: ProviderBase, root: str, *, settled: bool = False, since: str = ""
) -> str:
    """The provider's scan, its exit status after `AFTER`, then the facts: one exec.

    `settled`: right after the provider installed every pending update (its cheaper scan).
    `since`: the host's last scan's fingerprint (the scan may answer `unchanged`).
    """
    scan = (settled and provider.settled_scan_command()) or provider.scan_command_since(since)
    return f'( {scan}\n); echo "{AFTER} $?"; {facts_command(root)}'


def then_scan(
    command: str, provider: ProviderBase, root: str, after: str = "true", *, settled: bool = False
) -> str:
    """`command`, and when it succeeds, the provider's scan and the facts in the same exec.

    Saves the rescan's round trip after an install; `split_scan` takes the output apart.
    """
    return (
        f"{command}\nrc=$?; if [ $rc -eq 0 ]; then echo {AFTER}; "
        f"{scan_and_facts(provider, root, settled=settled)}; {after}; fi; exit $rc"
    )


def _parse_combined(done: CommandResult, text: str, provider: ProviderBase) -> HostScan | None:
    scanned, mark, rest = text.partition(AFTER + " ")
    code, _, facts = rest.partition("\n")
    if not mark or not code.strip().isdigit():
        return None
    results = [
        CommandResult(done.host, int(code), scanned, done.stderr, 0.0),
        CommandResult(done.host, 0, facts, "", 0.0),
    ]
    return parse_probe(done.host, [provider], results)


def split_scan(
    done: CommandResult, provider: ProviderBase
) -> tuple[CommandResult, HostScan | None]:
    """(the command's own result, the scan after it) from a `then_scan` command's result."""
    head, mark, tail = done.stdout.partition(AFTER + "\n")
    own = dataclasses.replace(done, stdout=head)
    if not mark or not done.ok:
        return own, None
    scan = _parse_combined(done, tail, provider)
    return own, (scan if scan is not None and scan.error is None else None)


@dataclass
class Recording:
    """A probed host's scan to store, with what its state depends on."""

    scan: HostScan
    last_outcome: str | None = None  # the host's last rollout outcome
    previous: store.PatchScan | None = None  # its last scan, for drift
    ours: frozenset[tuple[str, str]] = frozenset()  # packages this run changed (not drift)


def record_all(
    items: list[Recording],
    baseline: Baseline,
    run_id: str | None,
    seen: dict[tuple[str, str, str], datetime],
) -> list[HostScan]:
    """Store the scans, apply the baseline, compute and store each host's state.

    Two transactions for all the hosts (scans, then states), not two per host. `previous`
    and `seen` (first-seen times) are read once by the caller for all its hosts.
    """
    if not items:
        return []
    rows = store.record_scans(
        [
            {
                "host": i.scan.host,
                "run_id": run_id,
                "installed": i.scan.installed,
                "pending": [u.model_dump(mode="json") for u in i.scan.pending],
                "plan_hash": i.scan.plan_hash,
                "fingerprint": i.scan.fingerprint,
                "reboot_required": i.scan.reboot_required,
                "reboot_packages": i.scan.reboot_packages,
                "needrestart": i.scan.needrestart,
                "applicable": any(p.applicable for p in i.scan.providers),
                "error": i.scan.error,
            }
            for i in items
        ]
    )
    now = utcnow()
    states: dict[str, dict[str, Any]] = {}
    for item, (scan_id, scanned_at) in zip(items, rows, strict=True):
        scan = item.scan
        scan.scan_id = scan_id
        scan.approved, scan.rejected = baseline.approve(scan.pending, seen, now)
        scan.drift = (
            drift(item.previous.installed, scan.installed, item.ours)
            if item.previous is not None
            else []
        )
        if scan.error is not None:
            scan.state = Compliance.FAILED
        else:
            scan.state = state_of(
                applicable=any(p.applicable for p in scan.providers),
                approved=scan.approved,
                installed=scan.installed,
                reboot_required=scan.reboot_required,
                baseline=baseline,
                changed=scan.drift,
                last_outcome=item.last_outcome,
            )
        states[scan.host] = {
            "state": str(scan.state),
            "scan_id": scan_id,
            "scanned_at": scanned_at,
            "drift": scan.drift,
            "error": scan.error,
        }
    store.save_states(states)
    return [i.scan for i in items]
