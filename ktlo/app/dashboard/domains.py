"""The sections of the patching and DR domains (operator view), from their stored state.

Nothing here probes a host or assesses a plan: the page shows what the last scan, rollout,
readiness pass and drill recorded. A section whose domain fails to answer shows a note,
logged, instead of taking the whole page down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ktlo.app.dashboard.model import Section

log = logging.getLogger("ktlo.app.dashboard")


def _when(ts: datetime | None) -> str:
    return ts.strftime("%Y-%m-%d %H:%M UTC") if ts is not None else "-"


def _groups() -> dict[str, list[str]]:
    """host → its inventory groups (none when there is no inventory)."""
    from ktlo.hosts.inventory import load_inventory

    try:
        return {h.name: list(h.groups) for h in load_inventory().hosts.values()}
    except Exception as exc:  # no or invalid inventory: show hosts under "all" only
        log.info("dashboard: no inventory groups (%s)", exc)
        return {}


def patching() -> Section:
    """Compliance per host group (and `all`), and the hosts waiting for a reboot."""
    from tasks.patch import store
    from tasks.patch.model import Compliance

    # SSM's reading: these states need nothing done on the host.
    compliant_states = {Compliance.INSTALLED, Compliance.INSTALLED_OTHER, Compliance.NOT_APPLICABLE}
    states = store.states()
    scans = store.last_scans()
    groups = _groups()
    members: dict[str, list[Any]] = {"all": list(states)}
    for row in states:
        for group in groups.get(row.host, []):
            members.setdefault(group, []).append(row)
    rows = []
    for group, hosts in members.items():
        compliant = sum(h.state in compliant_states for h in hosts)
        reboot = sorted(
            h.host
            for h in hosts
            if h.state == Compliance.INSTALLED_PENDING_REBOOT
            or (h.host in scans and scans[h.host].reboot_required)
        )
        bad = sorted(
            f"{h.host} ({h.state})"
            for h in hosts
            if h.state in (Compliance.MISSING, Compliance.FAILED)
        )
        pct = f"{100 * compliant / len(hosts):.0f}%" if hosts else "-"
        rows.append(
            [
                group,
                f"{compliant}/{len(hosts)} ({pct})",
                ", ".join(reboot) or "-",
                ", ".join(bad) or "-",
            ]
        )
    note = None if states else "No host scanned yet (run the patch-scan runbook)."
    columns = ["group", "compliant", "pending reboot", "missing / failed"]
    return Section(title="Patching", columns=columns, rows=rows, note=note)


def _targets(report: dict[str, Any]) -> tuple[str, str]:
    """Each service's achieved vs target RTO and RPO, from a drill's report."""

    def pair(achieved: Any, target: Any) -> str:
        got = f"{achieved:.0f}" if isinstance(achieved, int | float) else "-"
        return f"{got}/{target:.0f} s" if isinstance(target, int | float) else got

    services = report.get("services") or []
    rto = "; ".join(
        f"{s.get('name')}: {pair(s.get('rto_achieved_s'), s.get('rto_target_s'))}" for s in services
    )
    rpo = "; ".join(
        f"{s.get('name')}: {pair(s.get('rpo_achieved_s'), s.get('rpo_target_s'))}" for s in services
    )
    return rto or "-", rpo or "-"


def dr() -> Section:
    """Readiness per plan (as last assessed) and the last drill's achieved vs target RTO/RPO."""
    from tasks.dr import store
    from tasks.dr.plan import load_plans

    readiness = store.readiness_states()
    names = sorted({p.name for p in load_plans()[0]} | set(readiness))
    drills = store.last_drills(names)
    rows = []
    for name in names:
        ready = readiness.get(name)
        if ready is None:
            state = "not assessed yet"
        else:
            state = "ready" if ready.ready else "NOT READY: " + "; ".join(ready.problems)
        drill = drills.get(name)
        if drill is None:
            rows.append([name, state, "never drilled", "-", "-"])
            continue
        rto, rpo = _targets(drill.report or {})
        rows.append([name, state, f"{drill.verdict} {_when(drill.finished_at)}", rto, rpo])
    note = None if names else "No DR plans."
    columns = ["plan", "readiness", "last drill", "RTO achieved/target", "RPO achieved/target"]
    return Section(title="DR", columns=columns, rows=rows, note=note)


SECTIONS: dict[str, Callable[[], Section]] = {"Patching": patching, "DR": dr}


def gather() -> list[Section]:
    out = []
    for title, build in SECTIONS.items():
        try:
            out.append(build())
        except Exception as exc:  # one domain's trouble must not take the page down
            log.error("dashboard: the %s section failed: %s", title, exc)
            out.append(
                Section(
                    title=title,
                    columns=[],
                    rows=[],
                    note=f"could not be read: {type(exc).__name__}",
                )
            )
    return out
