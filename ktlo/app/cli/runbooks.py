"""`ktlo validate`, `ktlo list`, `ktlo run`: working with runbooks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ktlo.app.cli.common import ago, console, esc, fail, iso, print_json, styled
from ktlo.errors import KtloError, Problem, RunbookInvalid
from ktlo.status import RunStatus, StepStatus


def _rel(path: str) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def _problem_json(p: Problem) -> dict[str, Any]:
    return {"path": _rel(p.path), "line": p.line, "message": p.message}


def _expand(paths: list[Path]) -> list[Path]:
    from ktlo.runbook.loader import runbook_files

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
    from ktlo.runbook.loader import load_all, load_runbook
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
                "problems": [_problem_json(p) for p in problems],
            }
        )
    else:
        for p in problems:
            console.print(esc(f"{_rel(p.path)}:{p.line}: {p.message}"), soft_wrap=True)
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
    from ktlo.runbook.loader import load_all
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
                "invalid": [_problem_json(p) for p in problems],
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
            esc(rb.name),
            esc(rb.description.strip().split("\n")[0][:60]),
            esc(_schedule_text(rb)),
            esc(_trigger_text(rb)),
            result,
        )
    console.print(table)
    for p in problems:
        console.print(
            f"[red]invalid:[/red] {esc(f'{_rel(p.path)}:{p.line}: {p.message}')}", soft_wrap=True
        )


def _value_text(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    text = text.rstrip("\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _print_plan(rb: Any, values: dict[str, Any]) -> None:
    from rich.tree import Tree

    from ktlo.engine.plan import plan

    steps = plan(rb, values)
    tree = Tree(
        f"[bold]Plan for runbook {esc(rb.name)}[/bold] [dim](dry run: nothing is executed)[/dim]"
    )
    if values:
        tree.add("parameters: " + esc(", ".join(f"{k}={v!r}" for k, v in values.items())))
    for wave in sorted({p.wave for p in steps}):
        in_wave = [p for p in steps if p.wave == wave]
        label = f"[bold]wave {wave}[/bold]" + (
            " [dim](in parallel)[/dim]" if len(in_wave) > 1 else ""
        )
        branch = tree.add(label)
        for p in in_wave:
            head = f"[cyan]{esc(p.id)}[/cyan]  {esc(p.uses)}"
            if p.needs:
                head += f"  [dim]needs {esc(', '.join(p.needs))}[/dim]"
            if p.options:
                head += f"  [yellow]{esc(p.options)}[/yellow]"
            node = branch.add(head)
            if p.condition:
                node.add(f"if: {esc(p.condition)}")
            inputs = p.inputs if isinstance(p.inputs, dict) else {"with": p.inputs}
            for key, value in inputs.items():
                node.add(f"[dim]{esc(key)}:[/dim] {esc(_value_text(value))}")
    console.print(tree)


def run(
    ref: str = typer.Argument(..., metavar="NAME|PATH", help="runbook name or file"),
    param: list[str] = typer.Option(
        None, "--param", "-p", help="parameter as key=value (repeatable)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and run nothing"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
) -> None:
    """Run a runbook now (exit 0 on success, 1 on failure)."""
    from ktlo.orchestration.local_server import preset_api
    from ktlo.runbook.loader import find_runbook, load_runbook
    from ktlo.runbook.params import parse_cli_params, validate_params

    preset_api()  # before validation imports Prefect
    try:
        path = find_runbook(ref)
        rb = load_runbook(path)
    except RunbookInvalid as exc:
        if as_json:
            print_json({"status": "invalid", "problems": [_problem_json(p) for p in exc.problems]})
            raise typer.Exit(1) from None
        for p in exc.problems:
            console.print(esc(f"{_rel(p.path)}:{p.line}: {p.message}"), soft_wrap=True)
        fail(f"runbook {ref} is invalid; nothing was run")
    values = validate_params(rb, parse_cli_params(rb, param or []))
    if dry_run:
        _print_plan(rb, values)
        return
    result = execute(rb, values, quiet=as_json)
    if as_json:
        print_json(result)
    else:
        show_result(result)
    if not RunStatus(result["status"]).ok:
        raise typer.Exit(1)


def execute(rb: Any, values: dict[str, Any], *, quiet: bool = False) -> dict[str, Any]:
    """Run the runbook's flow in this process against the Prefect API; returns the stored result.

    Runbooks in the runbooks directory run as their own flow (typed parameters in the UI);
    a runbook file elsewhere runs through the generic flow.
    """
    from ktlo.orchestration.local_server import ensure_api
    from ktlo.orchestration.watchdog import Watchdog
    from ktlo.settings import get_settings

    api_url = ensure_api(quiet=quiet)
    from flows.catalog import flow_for
    from flows.runbook import runbook_flow
    from ktlo.runbook.loader import hand_over
    from ktlo.store.runs import get_run, step_json, steps_of

    started = time.perf_counter()
    hand_over(rb)
    call: Any
    if rb.path is not None and rb.path.resolve().parent == get_settings().runbooks_dir:
        call = flow_for(rb)(**values, return_state=True)
    else:
        call = runbook_flow(runbook=str(rb.path.resolve()), **values, return_state=True)
    # Prefect's log shipper writes every batch it cannot send to stderr while
    # logging.raiseExceptions is set; a lost server is the watchdog's one line instead.
    logging.raiseExceptions = False
    with Watchdog(api_url, _stop_run(api_url)):
        state = asyncio.run(call)
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
        "steps": [step_json(s) for s in steps],
    }


def _stop_run(api_url: str) -> Any:
    """What `ktlo run` does when its Prefect server is gone: record, say so in one line, exit.

    Its steps die with it (ktlo.processes); the run stays marked as unfinished business on
    this machine, so Prefect gets its final state once the server is back (`ktlo history`).
    """

    def stop(reason: str) -> None:
        from ktlo.app.cli.common import err_console
        from ktlo.orchestration import liveness
        from ktlo.store import runs

        message = f"lost the Prefect server at {api_url} mid-run ({reason}); the run was stopped"
        for run_id in list(liveness.here):
            runs.finish_run(run_id, RunStatus.CRASHED, error=message)
        err_console.print(
            f"[red]error:[/red] {message}; Prefect gets its final state once the server is "
            "back (`ktlo history`)",
            soft_wrap=True,
            markup=True,
            highlight=False,
        )
        os._exit(1)

    return stop


def _first_line(text: str | None, limit: int = 120) -> str:
    line = (text or "").strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def show_result(result: dict[str, Any]) -> None:
    table = Table(
        title=f"Runbook {esc(result['runbook'])}: {styled(result['status'])}", title_justify="left"
    )
    for col in ("step", "uses", "status", "attempts", "duration", "result"):
        table.add_column(col, overflow="fold")
    for s in result["steps"]:
        status = styled(s["status"]) + (" (continued)" if s["continued"] else "")
        detail = (
            s["error"] if s["status"] in (StepStatus.FAILED, StepStatus.NOT_RUN) else s["summary"]
        )
        ms = s["duration_ms"]
        table.add_row(
            esc(s["id"]),
            esc(s["uses"]),
            status,
            str(s["attempts"] or ""),
            "" if ms is None else (f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"),
            esc(_first_line(detail)),
        )
    console.print(table)
    if result["error"]:
        console.print(f"[red]{esc(result['error'])}[/red]", soft_wrap=True)
    if result["url"]:
        console.print(f"Flow run in the Prefect UI: {esc(result['url'])}")


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("list")(list_runbooks)
    app.command("run")(run)
