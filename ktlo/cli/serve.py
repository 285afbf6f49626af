"""`ktlo serve`: serve every runbook deployment from this process."""

from __future__ import annotations

import typer

from ktlo.cli.common import console


def serve(
    limit: int = typer.Option(
        None, "--limit", min=1, help="at most this many runs at once (default: no limit)"
    ),
    grace: float = typer.Option(
        60.0, "--grace", min=0, help="seconds runs in flight may finish after SIGTERM"
    ),
    poll: float = typer.Option(
        2.0, "--poll", min=0.5, help="seconds between looks for scheduled runs"
    ),
) -> None:
    """Serve every runbook deployment: schedules fire, UI and API runs execute."""
    import asyncio
    import logging

    from ktlo.prefect_local import ensure_api
    from ktlo.serve import ServeOptions, Server
    from ktlo.settings import get_settings

    api = ensure_api()
    logging.getLogger("ktlo").setLevel(logging.INFO)  # Prefect's console handler prints it
    console.print(f"ktlo serve: runbooks {get_settings().runbooks_dir}, Prefect API {api}")
    console.print(f"Prefect UI: {api.removesuffix('/api')}  (Deployments → runbook/… → Run)")
    server = Server(ServeOptions(limit=limit, grace_s=grace, poll_s=poll))
    asyncio.run(server.run())
    console.print("ktlo serve stopped")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
