"""`ktlo serve` (deployments + receiver) and `ktlo webhook` (the receiver alone)."""

from __future__ import annotations

import typer

from ktlo.app.cli.common import console, esc, fail


def _token(insecure_no_auth: bool) -> str | None:
    from ktlo.settings import get_settings

    secret = get_settings().webhook_token
    if secret is not None and secret.get_secret_value():
        return secret.get_secret_value()
    if not insecure_no_auth:
        fail(
            "KTLO_WEBHOOK_TOKEN is not set: the webhook receiver refuses to start without it. "
            "Set it, or pass --insecure-no-auth (trusted networks only), or --no-webhook."
        )
    console.print("[yellow]warning: the webhook receiver accepts unauthenticated requests[/yellow]")
    return None


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address of the webhook receiver"),
    port: int = typer.Option(8080, "--port", help="port of the webhook receiver"),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="accept alerts without a token"
    ),
    no_webhook: bool = typer.Option(False, "--no-webhook", help="serve deployments only"),
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
    """Serve every runbook deployment (schedules, UI runs) and the webhook receiver."""
    import asyncio
    import logging

    from ktlo.app.serve import ServeOptions, Server
    from ktlo.orchestration.local_server import ensure_api
    from ktlo.settings import get_settings

    token = None if no_webhook else _token(insecure_no_auth)
    api = ensure_api()
    logging.getLogger("ktlo").setLevel(logging.INFO)  # Prefect's console handler prints it
    console.print(esc(f"ktlo serve: runbooks {get_settings().runbooks_dir}, Prefect API {api}"))
    console.print(esc(f"Prefect UI: {api.removesuffix('/api')}  (Deployments → runbook/… → Run)"))
    options = ServeOptions(
        host=host,
        port=port,
        webhook=not no_webhook,
        token=token,
        limit=limit,
        grace_s=grace,
        poll_s=poll,
    )
    asyncio.run(Server(options).run())
    console.print("ktlo serve stopped")


def webhook(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port"),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="accept alerts without a token"
    ),
) -> None:
    """Run the webhook receiver alone (runs start on whatever serves the deployments)."""
    import asyncio
    import logging

    from ktlo.app.heap import freeze_startup_heap
    from ktlo.incidents.outbox import Dispatcher
    from ktlo.incidents.receiver import create_app, make_server
    from ktlo.orchestration.local_server import ensure_api

    token = _token(insecure_no_auth)
    ensure_api()
    logging.getLogger("ktlo").setLevel(logging.INFO)

    async def main() -> None:
        dispatcher = Dispatcher()
        app = create_app(token, dispatcher=dispatcher)
        dispatcher.runbooks.runbooks()  # loaded before the first alert, and then frozen
        freeze_startup_heap()
        server = make_server(app, host, port, handle_signals=True)
        worker = asyncio.create_task(dispatcher.run_forever())
        console.print(f"ktlo webhook receiver on http://{host}:{port}/hooks/…")
        try:
            await server.serve()
        finally:
            dispatcher.stopping = True
            worker.cancel()

    asyncio.run(main())


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("webhook")(webhook)
