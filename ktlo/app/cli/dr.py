"""`ktlo dr readiness|drill|report`: DR plans from a terminal (the work is tasks/dr and
flows/dr.py; this module parses options and renders)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import typer

from ktlo.app.cli.common import console, fail, print_json

dr_app = typer.Typer(
    help="Disaster-recovery plans: readiness, drills, reports.", no_args_is_help=True
)


@dr_app.command("readiness")
def readiness_cmd(
    plan: str | None = typer.Argument(None, help="one plan (default: every plan)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Is each plan ready: backups within RPO, runbooks valid, drilled since it last changed?"""
    from tasks.dr.readiness import readiness

    report = readiness(plan)
    if as_json:
        print_json({"plans": [p.model_dump() for p in report.plans]})
    else:
        for p in report.plans:
            style = "green" if p.ready else "red"
            console.print(f"[{style}]{'ready' if p.ready else 'NOT READY'}[/] {p.name}")
            for problem in p.problems:
                console.print(f"  - {problem}", markup=False, soft_wrap=True)
        for run_id in report.cleaned:
            console.print(f"cleaned the scratch of dead drill {run_id[:8]}")
    if any(not p.ready for p in report.plans):
        raise typer.Exit(1)


@dr_app.command("drill")
def drill_cmd(
    plan: str = typer.Argument(..., help="plan name or file"),
    notes: str = typer.Option("", "--notes", help="operator notes for the report"),
    as_json: bool = typer.Option(False, "--json", help="print the drill's JSON report"),
) -> None:
    """Drill a plan: recover it into scratch targets, verify, measure, clean up (exit 0 passed)."""
    _run(plan, notes, as_json, execute=False)


@dr_app.command("execute")
def execute_cmd(
    plan: str = typer.Argument(..., help="plan name or file"),
    notes: str = typer.Option("", "--notes", help="operator notes for the report"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON report"),
) -> None:
    """Recover a plan for real, into its services' `target:`s, after an approval
    (`ktlo approve RUN` or the Prefect UI); the same report as a drill (exit 0 passed)."""
    _run(plan, notes, as_json, execute=True)


def _run(plan: str, notes: str, as_json: bool, *, execute: bool) -> None:
    from ktlo.orchestration.local_server import ensure_api
    from tasks.dr.plan import find_plan, load_plan
    from tasks.dr.scratch import real_targets

    loaded = load_plan(find_plan(plan))  # a bad plan fails here, before any server is started
    if execute:
        for svc in loaded.services:
            real_targets(svc)
    ensure_api(quiet=as_json)
    from flows.dr import drill_flow, execute_flow

    call: Any = (execute_flow if execute else drill_flow)(plan=plan, notes=notes, return_state=True)
    state = asyncio.run(call)
    if not state.is_completed():
        what = "recovery" if execute else "drill"
        fail(f"{what} of {plan} did not finish: {state.message or state.name}")
    doc: dict[str, Any] = state.result()
    if as_json:
        print_json(doc)
    else:
        from tasks.dr.report import markdown

        console.print(markdown(doc), markup=False, soft_wrap=True)
    if doc["verdict"] != "passed":
        raise typer.Exit(1)


@dr_app.command("report")
def report_cmd(
    run_id: str = typer.Argument(..., help="the drill's run id (or a unique prefix)"),
    fmt: str = typer.Option("md", "--format", help="html | json | md"),
    output: Path | None = typer.Option(None, "--output", "-o", help="write to a file"),
) -> None:
    """A drill's report as HTML (timeline chart and RTO/RPO table), JSON or Markdown."""
    from tasks.dr import report, store

    if fmt not in ("html", "json", "md"):
        fail("--format must be html, json or md")
    drill = store.get_drill(run_id)
    if drill is None or not drill.report:
        fail(f"no finished drill with run id '{run_id}'")
    if fmt == "json":
        import json

        text = json.dumps(drill.report, indent=2)
    else:
        text = report.html(drill.report) if fmt == "html" else report.markdown(drill.report)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        console.print(f"wrote {output}")
    else:
        print(text)


def register(app: typer.Typer) -> None:
    app.add_typer(dr_app, name="dr")
