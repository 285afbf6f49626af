"""`ktlo failover status`: each cluster's roles, lag and router state (clusters.yaml)."""

from __future__ import annotations

import typer

from ktlo.app.cli.common import console, print_json

failover_app = typer.Typer(help="PostgreSQL clusters (KTLO_CLUSTERS).", no_args_is_help=True)


@failover_app.command("status")
def status(
    clusters: list[str] = typer.Argument(None, help="clusters to show (default: all)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Probe every node now: role, reachability, timeline, lag in bytes, sync state, router."""
    from rich.table import Table

    from tasks.failover.commands import status as status_of

    data = status_of(clusters or None)
    if as_json:
        print_json(data)
        return
    for cluster in data["clusters"]:
        title = f"{cluster['name']}: primary {cluster['primary'] or '[red]none[/red]'}"
        if cluster.get("split_brain"):
            title += f"  [red]SPLIT BRAIN: {', '.join(cluster['split_brain'])}[/red]"
        table = Table(
            "node", "role", "timeline", "lsn", "lag bytes", "sync", "router", "error", title=title
        )
        for n in cluster["nodes"]:
            role = n["role"] if n["reachable"] else f"[red]{n['role']}[/red]"
            table.add_row(
                n["name"],
                role,
                str(n["timeline"] or ""),
                n["lsn"] or "",
                "" if n["lag_bytes"] is None else str(n["lag_bytes"]),
                n["sync_state"] or "",
                n["router"] or "",
                n["error"] or "",
            )
        console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(failover_app, name="failover")
