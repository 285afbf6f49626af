"""`ktlo history`: past runs and their steps, from the ktlo store."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from ktlo.app.cli.common import (
    ago,
    console,
    duration,
    esc,
    fail,
    iso,
    matches_id,
    print_json,
    short_id,
    styled,
)
from ktlo.status import StepStatus


def _run_json(run: Any, steps: list[Any]) -> dict[str, Any]:
    from ktlo.store.runs import step_json

    return {
        "id": run.id,
        "runbook": run.runbook,
        "status": run.status,
        "trigger": run.trigger,
        "parent_run_id": run.parent_run_id,
        "params": run.params,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "error": run.error,
        "url": run.url,
        "steps": [step_json(s) for s in steps],
    }


def _tally(steps: list[Any]) -> str:
    marks: dict[str, str] = {
        StepStatus.SUCCEEDED: "[green]✓[/]",
        StepStatus.FAILED: "[red]✗[/]",
        StepStatus.SKIPPED: "[dim]⏭[/]",
        StepStatus.NOT_RUN: "[dim]·[/]",
    }
    counts: dict[str, int] = {}
    for s in steps:
        counts[s.status] = counts.get(s.status, 0) + 1
    return " ".join(f"{n}{marks.get(k, k)}" for k, n in counts.items())


def reconcile_quietly() -> None:
    """Before showing runs as running, check they still are: here, then with Prefect."""
    import asyncio
    import os

    from ktlo.orchestration import liveness, local_server
    from ktlo.orchestration.crashes import has_stale_runs, reconcile

    liveness.close_dead_runs()  # runs whose process died here: known without Prefect
    if not has_stale_runs():
        return
    if not os.environ.get("PREFECT_API_URL"):
        info = local_server.running()
        if info is None:
            return
        os.environ["PREFECT_API_URL"] = info.api_url
    try:
        asyncio.run(reconcile())
    except Exception as exc:  # the history is still worth showing
        console.print(f"[yellow]could not check running runs against Prefect: {esc(exc)}[/yellow]")


def history(
    run_id: str = typer.Argument(
        None, help="show one run's steps (the start or the end of its id is enough)"
    ),
    runbook: str = typer.Option(None, "--runbook", "-r", help="only this runbook"),
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="how many runs"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Past runs and their steps."""
    from ktlo.store.runs import recent_runs, steps_of

    reconcile_quietly()
    runs = recent_runs(runbook, limit=limit if not run_id else 10_000)
    if run_id:
        runs = [r for r in runs if matches_id(r.id, run_id)]
        if not runs:
            fail(f"no run with id {run_id}")
        runs = runs[:1]
    details = [(r, steps_of(r.id)) for r in runs]
    if as_json:
        print_json({"runs": [_run_json(r, s) for r, s in details]})
        return
    if run_id:
        run, steps = details[0]
        console.print(
            f"[bold]{esc(run.runbook)}[/bold] run {esc(run.id)}: {styled(run.status)} "
            f"({esc(run.trigger)}, started {iso(run.started_at)}, took {duration(run.started_at, run.finished_at)})"
        )
        if run.error:
            console.print(f"[red]{esc(run.error)}[/red]", soft_wrap=True)
        table = Table()
        for col in ("step", "uses", "status", "attempts", "duration", "result"):
            table.add_column(col, overflow="fold")
        for s in steps:
            detail = s.error if s.status in (StepStatus.FAILED, StepStatus.NOT_RUN) else s.summary
            table.add_row(
                esc(s.step_id),
                esc(s.uses),
                styled(s.status) + (" (continued)" if s.continued else ""),
                str(s.attempts or ""),
                duration(s.started_at, s.finished_at),
                esc(detail or ""),
            )
        console.print(table)
        if run.url:
            console.print(f"Prefect UI: {esc(run.url)}")
        return
    if not details:
        console.print("no runs recorded yet")
        return
    table = Table(title="Run history", title_justify="left")
    table.add_column("run", no_wrap=True, min_width=len(short_id(details[0][0].id)))
    for col in ("runbook", "status", "trigger", "started", "took", "steps"):
        table.add_column(col, no_wrap=True)
    table.add_column("error", overflow="fold", ratio=1)
    for r, run_steps in details:
        table.add_row(
            esc(short_id(r.id)),
            esc(r.runbook),
            styled(r.status),
            esc(r.trigger),
            ago(r.started_at),
            duration(r.started_at, r.finished_at),
            _tally(run_steps),
            esc((r.error or "")[:80]),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("history")(history)
