"""`ktlo status`: the current alert state of every health check and the readiness of every DR
plan (as its last readiness pass recorded it), from the ktlo store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ktlo.app.cli.common import ago, console, esc, fail, iso, print_json

STATE_STYLE = {"OK": "green", "DEGRADED": "yellow", "FAILING": "bold red"}
ORDER = {"FAILING": 0, "DEGRADED": 1, "OK": 2}


def _failing(row: Any) -> list[str]:
    return [
        f"{c.get('condition')} (actual {c.get('actual')})"
        for c in row.last_conditions or []
        if not c.get("ok")
    ]


def _json(row: Any) -> dict[str, Any]:
    remediation = None
    if row.remediation_runbook:
        remediation = {
            "runbook": row.remediation_runbook,
            "status": row.remediation_status,
            "flow_run_id": row.remediation_run_id,
            "started_at": iso(row.remediation_started_at),
            "error": row.remediation_error,
        }
    return {
        "key": row.key,
        "runbook": row.runbook,
        "step": row.step_id,
        "name": row.name,
        "type": row.check_type,
        "target": row.target,
        "state": row.state,
        "since": iso(row.since),
        "failing_since": iso(row.streak_since),
        "last_checked_at": iso(row.last_checked_at),
        "last_result": row.last_health,
        "latency_ms": row.last_duration_ms,
        "failing": _failing(row),
        "error": row.last_error,
        "suppressed": row.suppressed,
        "remediation": remediation,
        "flow_run_url": row.last_url,
    }


def status(
    runbook: str = typer.Option(None, "--runbook", "-r", help="only this runbook's checks"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    html: Path = typer.Option(
        None, "--html", help="write the dashboard as one self-contained HTML file", dir_okay=False
    ),
    public: bool = typer.Option(
        False, "--public", help="with --html: the public status page (names and states only)"
    ),
) -> None:
    """The current state of every health check (worst first)."""
    from rich.table import Table

    from tasks.health.store import current_states

    if html is not None:
        _write_html(html, public=public)
        return

    rows = sorted(current_states(runbook), key=lambda r: (ORDER.get(r.state, 3), r.key))
    plans = [] if runbook else _dr_plans()
    if as_json:
        print_json({"checks": [_json(r) for r in rows], "dr_plans": plans})
        return
    if plans:
        _print_plans(plans)
    if not rows:
        console.print("no health checks recorded yet (run a runbook with a health.sweep step)")
        return
    table = Table(title="Health checks", title_justify="left")
    table.add_column("check", overflow="fold")
    table.add_column("runbook", overflow="fold")
    for col in ("state", "since", "checked", "latency"):
        table.add_column(col, no_wrap=True)
    table.add_column("detail", overflow="fold", ratio=1, min_width=24)
    for r in rows:
        detail = esc("; ".join([*_failing(r), *([r.last_error] if r.last_error else [])]))
        if r.state == "OK" and r.last_health != "ok":
            detail = f"last probe {r.last_health}: {detail}"
        if r.suppressed:
            detail += f" [dim](alerts suppressed: {esc(r.suppressed)})[/]"
        if r.remediation_runbook:
            detail += esc(f" (remediation {r.remediation_runbook}: {r.remediation_status})")
        latency = f"{r.last_duration_ms:.0f} ms" if r.last_duration_ms is not None else ""
        style = STATE_STYLE.get(r.state, "white")
        table.add_row(
            esc(r.name),
            esc(f"{r.runbook}/{r.step_id}"),
            f"[{style}]{esc(r.state)}[/]",
            ago(r.since),
            ago(r.last_checked_at),
            latency,
            detail,
        )
    console.print(table)
    counts = {s: sum(r.state == s for r in rows) for s in ORDER}
    console.print(
        f"{len(rows)} checks: {counts['OK']} OK, {counts['DEGRADED']} DEGRADED, "
        f"{counts['FAILING']} FAILING"
    )


def _dr_plans() -> list[dict[str, Any]]:
    """DR plans as the last readiness pass left them (`ktlo dr readiness`, `dr.readiness`)."""
    from tasks.dr.store import readiness_states

    return [
        {
            "name": r.plan,
            "ready": r.ready,
            "state": "OK" if r.ready else "FAILING",
            "since": iso(r.changed_at),
            "problems": r.problems,
        }
        for r in sorted(readiness_states().values(), key=lambda r: (r.ready, r.plan))
    ]


def _print_plans(plans: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="DR plans (readiness)", title_justify="left")
    table.add_column("plan", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("problems", overflow="fold", ratio=1, min_width=24)
    for p in plans:
        style = STATE_STYLE[p["state"]]
        state = "ready" if p["ready"] else "NOT READY"
        table.add_row(esc(p["name"]), f"[{style}]{state}[/]", esc("; ".join(p["problems"])))
    console.print(table)


def _write_html(path: Path, *, public: bool) -> None:
    from ktlo.app.dashboard import pages, render

    if public:
        text = render.public_html(pages.public_page(), refresh=False)
    else:
        text = render.operator_html(pages.operator_page(), refresh=False)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"--html {path}: {exc.strerror or exc}")
    console.print(f"wrote {'the public status page' if public else 'the dashboard'} to {path}")


def register(app: typer.Typer) -> None:
    app.command("status")(status)
