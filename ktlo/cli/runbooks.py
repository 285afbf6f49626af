"""`ktlo validate`, `ktlo list`, `ktlo run`: working with runbooks."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ktlo.cli.common import ago, console, fail, iso, print_json, styled
from ktlo.errors import KtloError, Problem, RunbookInvalid


def _rel(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _expand(paths: list[Path]) -> list[Path]:
    from ktlo.loader import runbook_files

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(runbook_files(p))
        else:
            files.append(p)
    return files


def validate(
    paths: list[Path] = typer.Argument(
        None, help="runbook files or directories (default: the runbooks directory)"
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Validate runbooks: schema, step types, inputs, needs, cycles and templates."""
    from ktlo.loader import load_all, load_runbook
    from ktlo.settings import get_settings

    problems: list[Problem] = []
    valid: list[str] = []
    if not paths:
        directory = get_settings().runbooks_dir
        runbooks, problems = load_all(directory)
        valid = [str(rb.path) for rb in runbooks]
        checked = len(valid) + len({p.path for p in problems})
        if checked == 0:
            fail(f"no runbooks found in {directory}")
    else:
        for path in _expand(paths):
            try:
                rb = load_runbook(path)
                valid.append(str(rb.path))
            except RunbookInvalid as exc:
                problems.extend(exc.problems)
    invalid_files = sorted({p.path for p in problems})
    if as_json:
        print_json(
            {
                "valid": [_rel(v) for v in valid],
                "problems": [
                    {"path": _rel(p.path), "line": p.line, "message": p.message} for p in problems
                ],
            }
        )
    else:
        for p in problems:
            console.print(f"{_rel(p.path)}:{p.line}: {p.message}", markup=False, soft_wrap=True)
        ok = f"[green]{len(valid)} valid[/green]"
        bad = f", [red]{len(invalid_files)} invalid[/red]" if invalid_files else ""
        console.print(f"{ok}{bad}")
    if problems:
        raise typer.Exit(1)


def _schedule_text(rb: Any) -> str:
    parts = []
    for s in rb.schedules:
        parts.append(f"cron {s.cron} {s.timezone}" if s.cron else f"every {s.interval_s:g}s")
    return "; ".join(parts)


def _trigger_text(rb: Any) -> str:
    return "; ".join(
        f"{t.source}: " + ", ".join(f"{k}={v}" for k, v in t.match.items()) for t in rb.triggers
    )


def list_runbooks(
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Runbooks with their schedule, triggers and last result."""
    from ktlo.loader import load_all
    from ktlo.store.runs import last_runs

    runbooks, problems = load_all()
    last = last_runs()
    if as_json:
        print_json(
            {
                "runbooks": [
                    {
                        "name": rb.name,
                        "path": _rel(str(rb.path)),
                        "description": rb.description,
                        "schedule": [s.model_dump(exclude_none=True) for s in rb.schedules],
                        "triggers": [t.model_dump() for t in rb.triggers],
                        "parameters": list(rb.parameters),
                        "last_run": (
                            {
                                "id": last[rb.name].id,
                                "status": last[rb.name].status,
                                "started_at": iso(last[rb.name].started_at),
                            }
                            if rb.name in last
                            else None
                        ),
                    }
                    for rb in runbooks
                ],
                "invalid": [
                    {"path": _rel(p.path), "line": p.line, "message": p.message} for p in problems
                ],
            }
        )
        return
    table = Table(title="Runbooks", title_justify="left")
    for col in ("name", "description", "schedule", "triggers", "last result"):
        table.add_column(col)
    for rb in runbooks:
        run = last.get(rb.name)
        result = f"{styled(run.status)} {ago(run.started_at)}" if run else "[dim]never run[/dim]"
        table.add_row(
            rb.name,
            rb.description.strip().split("\n")[0][:60],
            _schedule_text(rb),
            _trigger_text(rb),
            result,
        )
    console.print(table)
    for p in problems:
        console.print(f"[red]invalid:[/red] {_rel(p.path)}:{p.line}: {p.message}", soft_wrap=True)


def _print_plan(rb: Any, values: dict[str, Any]) -> None:
    from ktlo.plan import plan

    console.print(f"[bold]Plan for runbook {rb.name}[/bold] (dry run: nothing is executed)")
    if values:
        console.print(
            "parameters: " + ", ".join(f"{k}={v!r}" for k, v in values.items()), markup=False
        )
    table = Table(show_lines=True)
    for col in ("wave", "step", "uses", "needs", "if", "inputs", "options"):
        table.add_column(col, overflow="fold")
    for p in plan(rb, values):
        table.add_row(
            str(p.wave),
            p.id,
            p.uses,
            ", ".join(p.needs),
            p.condition or "",
            json.dumps(p.inputs, default=str, ensure_ascii=False)[:400],
            p.options,
        )
    console.print(table)


def run(
    ref: str = typer.Argument(..., metavar="NAME|PATH", help="runbook name or file"),
    param: list[str] = typer.Option(
        None, "--param", "-p", help="parameter as key=value (repeatable)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and run nothing"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Run a runbook now (exit 0 on success, 1 on failure)."""
    from ktlo.loader import find_runbook, load_runbook
    from ktlo.params import parse_cli_params, validate_params

    try:
        path = find_runbook(ref)
        rb = load_runbook(path)
    except RunbookInvalid as exc:
        for p in exc.problems:
            console.print(f"{_rel(p.path)}:{p.line}: {p.message}", markup=False, soft_wrap=True)
        fail(f"runbook {ref} is invalid; nothing was run")
    values = validate_params(rb, parse_cli_params(rb, param or []))
    if dry_run:
        _print_plan(rb, values)
        return
    result = execute(str(path.resolve()), values, quiet=as_json)
    if as_json:
        print_json(result)
    else:
        show_result(result)
    if result["status"] not in ("succeeded", "succeeded_with_errors"):
        raise typer.Exit(1)


def execute(ref: str, values: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
    """Run the runbook flow in this process against the Prefect API; returns the stored result."""
    from ktlo.prefect_local import ensure_api

    ensure_api(quiet=quiet)
    from flows.runbook import runbook_flow
    from ktlo.store.runs import get_run, steps_of

    started = time.perf_counter()
    state = asyncio.run(runbook_flow(runbook=ref, **values, return_state=True))
    flow_run_id = str(state.state_details.flow_run_id)
    run_record = get_run(flow_run_id)
    if run_record is None:
        raise KtloError(f"run {flow_run_id} left no record: {state.message or state.name}")
    steps = steps_of(flow_run_id)
    return {
        "run_id": run_record.id,
        "runbook": run_record.runbook,
        "status": run_record.status,
        "error": run_record.error,
        "url": run_record.url,
        "seconds": round(time.perf_counter() - started, 2),
        "steps": [
            {
                "id": s.step_id,
                "uses": s.uses,
                "status": s.status,
                "continued": s.continued,
                "attempts": s.attempts,
                "duration_ms": s.duration_ms,
                "summary": s.summary,
                "error": s.error,
                "output": s.output,
            }
            for s in steps
        ],
    }


def show_result(result: dict[str, Any]) -> None:
    table = Table(
        title=f"Runbook {result['runbook']}: {styled(result['status'])}", title_justify="left"
    )
    for col in ("step", "uses", "status", "attempts", "duration", "result"):
        table.add_column(col, overflow="fold")
    for s in result["steps"]:
        status = styled(s["status"]) + (" (continued)" if s["continued"] else "")
        detail = s["error"] if s["status"] in ("failed", "not_run") else s["summary"]
        ms = s["duration_ms"]
        table.add_row(
            s["id"],
            s["uses"],
            status,
            str(s["attempts"] or ""),
            "" if ms is None else (f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"),
            (detail or "")[:200],
        )
    console.print(table)
    if result["error"]:
        console.print(f"[red]{result['error']}[/red]", soft_wrap=True)
    if result["url"]:
        console.print(f"Flow run in the Prefect UI: {result['url']}")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("list")(list_runbooks)
    app.command("run")(run)
