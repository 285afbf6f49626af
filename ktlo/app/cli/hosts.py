"""`ktlo hosts list|check`: the inventory and whether ktlo can reach its hosts."""

from __future__ import annotations

import typer

from ktlo.app.cli.common import console, print_json

hosts_app = typer.Typer(help="The hosts inventory (KTLO_INVENTORY).", no_args_is_help=True)


@hosts_app.command("list")
def list_hosts(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every host in the inventory, with its groups and how it is reached."""
    from rich.table import Table

    from tasks.hosts.commands import list_hosts as rows_of

    rows = rows_of()
    if as_json:
        print_json({"hosts": rows})
        return
    table = Table("host", "connection", "address", "user", "groups")
    for r in rows:
        where = f"{r['address']}:{r['port']}" if r["address"] else ""
        table.add_row(r["name"], r["connection"], where, r["user"] or "", ",".join(r["groups"]))
    console.print(table)


@hosts_app.command("check")
def check_hosts(
    selector: str = typer.Argument("all", help="all, a group, a host, or a comma list"),
    sudo: bool = typer.Option(False, "--sudo", help="also check `sudo -n true`"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Reach each host: SSH handshake, host key against known_hosts, a command (exit 1 if any fails)."""
    from rich.table import Table

    from tasks.hosts.commands import check_hosts as check

    rows = check(selector, sudo)
    bad = [r for r in rows if r["error"] or r["sudo"] is False]
    if as_json:
        print_json({"hosts": rows})
    else:
        table = Table("host", "reachable", "host key", "sudo", "ms", "error")
        for r in rows:
            table.add_row(
                r["name"],
                "yes" if r["reachable"] else "[red]no[/red]",
                r["host_key"] if r["host_key"] != "refused" else "[red]refused[/red]",
                "" if r["sudo"] is None else ("yes" if r["sudo"] else "[red]no[/red]"),
                "" if r["latency_ms"] is None else f"{r['latency_ms']:.0f}",
                r["error"] or "",
            )
        console.print(table)
    if bad:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(hosts_app, name="hosts")
