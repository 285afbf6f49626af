"""A host's compliance state (SPEC §10, SSM's seven) from its newest scan and last rollout."""

from __future__ import annotations

from tasks.patch.baseline import Baseline
from tasks.patch.model import Compliance, Outcome, Update


def drift(
    before: dict[str, dict[str, str]],
    after: dict[str, dict[str, str]],
    ours: frozenset[tuple[str, str]] = frozenset(),
) -> list[str]:
    """Packages whose version changed between two scans (`provider:name old->new`), except
    the ones ktlo itself changed (`ours`: (provider, name))."""
    out: list[str] = []
    for provider in sorted(set(before) | set(after)):
        old, new = before.get(provider, {}), after.get(provider, {})
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name) and (provider, name) not in ours:
                out.append(f"{provider}:{name} {old.get(name) or '-'}->{new.get(name) or '-'}")
    return out


def state_of(
    *,
    applicable: bool,
    approved: list[Update],
    installed: dict[str, dict[str, str]],
    reboot_required: bool,
    baseline: Baseline,
    changed: list[str],
    last_outcome: str | None,
) -> Compliance:
    """Failed > Missing > InstalledPendingReboot > InstalledRejected > InstalledOther > Installed."""
    if not applicable:
        return Compliance.NOT_APPLICABLE
    if approved and last_outcome in (Outcome.FAILED, Outcome.ROLLED_BACK):
        return Compliance.FAILED
    if approved:
        return Compliance.MISSING
    if reboot_required:
        return Compliance.INSTALLED_PENDING_REBOOT
    if any(
        baseline.rejects_installed(name, version)
        for versions in installed.values()
        for name, version in versions.items()
    ):
        return Compliance.INSTALLED_REJECTED
    if changed:
        return Compliance.INSTALLED_OTHER
    return Compliance.INSTALLED
