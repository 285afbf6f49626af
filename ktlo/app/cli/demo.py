"""`ktlo demo`: a self-contained tour of the engine on the embedded default."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.panel import Panel

from ktlo import PROJECT_DIR
from ktlo.app.cli.common import console, esc
from ktlo.status import RunStatus

REPO_RUNBOOKS = PROJECT_DIR / "runbooks"


def _demo_runbook() -> Path:
    from ktlo.errors import KtloError
    from ktlo.runbook.loader import find_runbook

    try:
        return find_runbook("demo")
    except KtloError:
        return find_runbook(str(REPO_RUNBOOKS / "demo.yaml"))


def run_demo() -> None:
    from ktlo.app.cli.runbooks import _print_plan, execute, show_result
    from ktlo.orchestration.local_server import ensure_api
    from ktlo.runbook.loader import load_all, load_runbook
    from ktlo.runbook.params import validate_params
    from ktlo.settings import get_settings
    from ktlo.store.audit import verify

    settings = get_settings()
    console.print(
        Panel.fit(
            "[bold]ktlo demo[/bold]: runbooks run as Prefect flows, on this machine.\n"
            f"state: {esc(settings.home_dir)}   runbooks: {esc(settings.runbooks_dir)}",
            border_style="cyan",
        )
    )
    console.rule("1. validate every runbook before anything runs")
    runbooks, problems = load_all()
    console.print(
        esc(f"{len(runbooks)} runbook(s) valid: {', '.join(rb.name for rb in runbooks) or '-'}")
    )
    for p in problems:
        console.print(f"[red]{esc(p)}[/red]")

    rb = load_runbook(_demo_runbook())
    values = validate_params(rb, {})
    console.rule("2. the plan: steps in waves along their `needs` (ktlo run demo --dry-run)")
    _print_plan(rb, values)

    console.rule("3. the run: a Prefect flow run, one task run per step")
    api = ensure_api()
    console.print(f"Prefect API: {api}")
    result = execute(rb, values)
    show_result(result)
    report = next((s for s in result["steps"] if s["id"] == "report"), None)
    if report and report.get("output"):
        console.print(
            Panel(
                esc(report["output"]["message"].rstrip()),
                title="report step output",
                border_style="green",
            )
        )

    console.rule("4. the audit trail (hash-chained; ktlo audit verify)")
    verdict = verify()
    mark = "[green]✓[/green]" if verdict.ok else "[red]✗[/red]"
    console.print(f"{mark} {esc(verdict.message)}")

    ui = api.removesuffix("/api")
    console.rule("where to look next")
    console.print(
        f"Prefect UI:          {ui}\n"
        f"  this flow run:     {esc(result['url'])}\n"
        f"  summary artifact:  {ui}/artifacts  (key [bold]runbook-demo[/bold])\n"
        "Try:\n"
        "  ktlo list                                   runbooks and their last result\n"
        "  ktlo history                                past runs; ktlo history RUN_ID for steps\n"
        "  ktlo run demo -p flaky_failures=3           the retry budget runs out: exit 1\n"
        "  ktlo server stop                            stop the local Prefect server",
        markup=True,
    )
    if result["status"] != RunStatus.SUCCEEDED:
        raise typer.Exit(1)
