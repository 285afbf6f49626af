"""`ktlo patch status|plan`: compliance per host and what a rollout would change."""

from __future__ import annotations

import typer

from ktlo.app.cli.common import console, print_json

patch_app = typer.Typer(
    help="Patch compliance and plans (from the last scans).", no_args_is_help=True
)


@patch_app.command("status")
def status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Each host's compliance state (SSM's seven) and its pending updates."""
    from rich.table import Table

    from tasks.patch.commands import status as status_of

    data = status_of()
    if as_json:
        print_json(data)
        return
    table = Table("host", "state", "pending", "security", "scanned")
    for h in data["hosts"]:
        sec = sum(1 for p in h["pending"] if p["security"])
        table.add_row(
            h["name"], h["state"], str(len(h["pending"])), str(sec), h["scanned_at"] or ""
        )
    console.print(table)


@patch_app.command("plan")
def plan(
    hosts: list[str] = typer.Argument(None, help="host names (default: every scanned host)"),
    security: bool = typer.Option(False, "--security", help="only security updates"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """What a rollout would install, package by package, from each host's last scan."""
    from tasks.patch.commands import plan as plan_of

    rows = plan_of(list(hosts or []), security)
    if as_json:
        print_json({"hosts": rows})
        return
    for row in rows:
        console.print(
            f"[bold]{row['host']}[/bold] (scanned {row['scanned_at']}, plan {row['plan_hash']})"
        )
        if row["error"]:
            console.print(f"  [red]scan error:[/red] {row['error']}", markup=True)
        for p in row["packages"]:
            mark = "[green]+[/green]" if p["install"] else "[dim]-[/dim]"
            sec = " [yellow]security[/yellow]" if p["security"] else ""
            why = f" [dim]({p['why_not']})[/dim]" if p["why_not"] else ""
            console.print(
                f"  {mark} {p['name']} {p['current'] or '(new)'} → {p['version']}{sec}{why}",
                markup=True,
                highlight=False,
            )
        if not row["packages"]:
            console.print("  nothing pending")


def register(app: typer.Typer) -> None:
    app.add_typer(patch_app, name="patch")
