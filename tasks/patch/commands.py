"""What `ktlo patch status|plan` show, as plain functions (the CLI only parses and renders)."""

from __future__ import annotations

from typing import Any

from ktlo.errors import KtloError
from ktlo.store.models import iso, utcnow
from tasks.patch import store
from tasks.patch.baseline import Baseline, UpdateClass
from tasks.patch.model import Update


def status() -> dict[str, Any]:
    """SPEC §10: `{"hosts": [{"name", "state", "pending": [...], "scanned_at"}]}`."""
    scans = store.last_scans()
    hosts = []
    for row in store.states():
        scan = scans.get(row.host)
        pending = [
            {"name": u["name"], "version": u["version"], "security": bool(u.get("security"))}
            for u in (scan.pending if scan is not None else [])
        ]
        hosts.append(
            {
                "name": row.host,
                "state": row.state,
                "pending": pending,
                "scanned_at": iso(row.scanned_at),
            }
        )
    return {"hosts": hosts}


def plan(hosts: list[str], security_only: bool = False) -> list[dict[str, Any]]:
    """Package by package, what a rollout would install on each host (from its last scan)."""
    scans = store.last_scans(hosts or None)
    unknown = sorted(set(hosts) - set(scans))
    if unknown:
        raise KtloError(f"never scanned: {', '.join(unknown)} (run the patch-scan runbook)")
    baseline = Baseline(classes=UpdateClass.SECURITY if security_only else UpdateClass.ALL)
    seen, now = store.first_seen(), utcnow()
    out = []
    for name, scan in sorted(scans.items()):
        packages = []
        for raw in scan.pending:
            update = Update.model_validate(raw)
            chosen, why = baseline.decide(update, seen, now)
            packages.append(
                {
                    "provider": update.provider,
                    "name": update.name,
                    "current": update.current,
                    "version": update.version,
                    "security": update.security,
                    "advisories": update.advisories,
                    "install": chosen is not None,
                    "why_not": why or None,
                }
            )
        out.append(
            {
                "host": name,
                "scanned_at": iso(scan.scanned_at),
                "plan_hash": scan.plan_hash,
                "reboot_required": scan.reboot_required,
                "error": scan.error,
                "packages": packages,
            }
        )
    return out
