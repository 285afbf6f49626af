"""`ktlo incidents`: what alerting sent, what it started, and how it ended."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from ktlo.app.cli.common import ago, console, esc, fail, iso, print_json, short_id

incidents_app = typer.Typer(
    help="Incidents received by the webhook receiver.", invoke_without_command=True
)


def _json(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "key": record.key,
        "source": record.source,
        "status": record.status,
        "severity": record.severity,
        "summary": record.summary,
        "labels": record.labels,
        "runbooks": record.matched,
        "repeats": record.repeats,
        "first_seen": iso(record.first_seen),
        "last_seen": iso(record.last_seen),
        "resolved_at": iso(record.resolved_at),
        "url": record.url,
    }


@incidents_app.callback()
def list_incidents(
    ctx: typer.Context,
    open_only: bool = typer.Option(False, "--open", help="only open incidents"),
    limit: int = typer.Option(50, "--limit", "-n", min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Incidents, newest first (unmatched ones are marked)."""
    if ctx.invoked_subcommand is not None:
        return
    from sqlmodel import col, select

    from ktlo.incidents.store import IncidentRecord, IncidentStatus
    from ktlo.store.db import session

    with session() as s:
        query = select(IncidentRecord)
        if open_only:
            query = query.where(IncidentRecord.status == IncidentStatus.OPEN)
        records = list(
            s.exec(query.order_by(col(IncidentRecord.first_seen).desc()).limit(limit)).all()
        )
    dead = _dead_letters()
    if as_json:
        print_json(
            {
                "incidents": [_json(r) for r in records],
                "outbox_dead": [
                    {
                        "incident_id": w.incident_id,
                        "kind": w.kind,
                        "target": w.target,
                        "error": w.error,
                    }
                    for w in dead
                ],
            }
        )
        return
    if not records:
        console.print("no incidents" + (" open" if open_only else ""))
        _print_dead(dead)
        return
    style: dict[str, str] = {
        IncidentStatus.OPEN: "red",
        IncidentStatus.RESOLVED: "green",
        IncidentStatus.SUPERSEDED: "dim",
    }
    table = Table(title="Incidents", title_justify="left")
    for column in ("key", "status", "severity", "summary", "runbooks", "repeats", "first seen"):
        table.add_column(column, overflow="fold")
    for r in records:
        status = f"[{style.get(r.status, 'white')}]{esc(r.status)}[/]"
        runbooks = esc(", ".join(r.matched)) or "[yellow]none matched[/yellow]"
        table.add_row(
            esc(r.key),
            status,
            esc(r.severity or ""),
            esc(r.summary[:80]),
            runbooks,
            str(r.repeats),
            ago(r.first_seen),
        )
    console.print(table)
    _print_dead(dead)


def _dead_letters() -> list[Any]:
    """Outbox items the Prefect API refused for good (never retried)."""
    from sqlmodel import col, select

    from ktlo.incidents.store import OutboxItem, OutboxStatus
    from ktlo.store.db import session

    query = select(OutboxItem).where(OutboxItem.status == OutboxStatus.DEAD)
    with session() as s:
        return list(s.exec(query.order_by(col(OutboxItem.id))).all())


def _print_dead(dead: list[Any]) -> None:
    if not dead:
        return
    console.print(
        f"[red]{len(dead)} action(s) refused by the Prefect API for good (dead-lettered, "
        "not retried):[/red]"
    )
    for w in dead[:20]:
        console.print(esc(f"  incident {w.incident_id}: {w.kind} {w.target}: {w.error}"))


@incidents_app.command("show")
def show(
    key: str = typer.Argument(..., help="incident key (or id)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The timeline of an incident: received, runs started and how they ended, resolved."""
    from sqlmodel import col, or_, select

    from ktlo.incidents.store import IncidentRecord, OutboxItem, OutboxStatus
    from ktlo.store.audit import events
    from ktlo.store.db import session
    from ktlo.store.runs import get_run

    with session() as s:
        records = list(
            s.exec(
                select(IncidentRecord)
                .where(or_(IncidentRecord.key == key, IncidentRecord.id == key))
                .order_by(col(IncidentRecord.first_seen))
            ).all()
        )
        if not records:
            fail(f"no incident with key or id {key!r} (see: ktlo incidents)")
        ids = [r.id for r in records]
        work = list(s.exec(select(OutboxItem).where(col(OutboxItem.incident_id).in_(ids))).all())
    timeline: list[dict[str, Any]] = []
    for e in events(limit=5000):
        details = e.details or {}
        if details.get("incident_id") in ids or (
            e.subject == records[0].key and e.action.startswith("incident.")
        ):
            entry = {"at": iso(e.ts), "what": e.action, "actor": e.actor, "details": details}
            if e.action == "incident.run_started" and e.run_id:
                run = get_run(e.run_id)
                entry["run"] = {
                    "id": e.run_id,
                    "status": run.status if run else "not started yet",
                    "error": run.error if run else None,
                }
            timeline.append(entry)
    timeline.sort(key=lambda t: t["at"] or "")
    if as_json:
        print_json(
            {
                "incidents": [_json(r) for r in records],
                "timeline": timeline,
                "outbox": [
                    {
                        "kind": w.kind,
                        "target": w.target,
                        "status": w.status,
                        "attempts": w.attempts,
                        "result": w.result,
                        "error": w.error,
                    }
                    for w in work
                ],
            }
        )
        return
    latest = records[-1]
    console.print(
        f"[bold]{esc(latest.key)}[/bold]: {esc(latest.summary)} "
        f"({esc(latest.source)}, {esc(latest.severity or 'no severity')})"
    )
    table = Table()
    for column in ("when", "what", "detail"):
        table.add_column(column, overflow="fold")
    for t in timeline:
        detail = ""
        if "run" in t:
            detail = f"{t['details'].get('runbook')} run {short_id(t['run']['id'])}: {t['run']['status']}"
        elif t["what"] == "incident.opened":
            detail = "runbooks: " + (
                ", ".join(t["details"].get("runbooks") or []) or "none matched"
            )
            if t["details"].get("truncated_alerts"):
                left_out = t["details"]["truncated_alerts"]
                detail += f"; {left_out} alerts of its group left out by the sender (max_alerts)"
        elif t["what"] == "incident.run_failed":
            detail = str(t["details"].get("error"))
        table.add_row(esc(t["at"] or ""), esc(t["what"].removeprefix("incident.")), esc(detail))
    console.print(table)
    _print_dead([w for w in work if w.status == OutboxStatus.DEAD])
    waiting = [w for w in work if w.status == OutboxStatus.PENDING]
    if waiting:
        console.print(
            f"[yellow]{len(waiting)} action(s) still queued (e.g. the Prefect API was down): "
            f"{esc(', '.join(f'{w.kind} {w.target}' for w in waiting))}[/yellow]"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(incidents_app, name="incidents")
