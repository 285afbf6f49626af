"""`ktlo audit`, `ktlo approve`, `ktlo server`, `ktlo deployments`, `ktlo demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from ktlo import PROJECT_DIR
from ktlo.app.cli.common import console, esc, fail, matches_id, print_json

audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
server_app = typer.Typer(
    help="The local Prefect server of the embedded setup.", no_args_is_help=True
)


@audit_app.command("verify")
def audit_verify(
    as_json: bool = typer.Option(False, "--json"),
    previous_keys: Path = typer.Option(
        None,
        "--previous-keys",
        help="file of audit keys used before KTLO_AUDIT_KEY was rotated, one a line, oldest first",
    ),
) -> None:
    """Verify the audit trail: hash chain, head MAC, anchor file, runs (exit 0 intact, 1 tampered)."""

    from ktlo.store.audit import verify

    keys: list[str] = []
    if previous_keys is not None:
        try:
            text = previous_keys.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"--previous-keys {previous_keys}: {getattr(exc, 'strerror', None) or exc}")
        keys = [line.strip() for line in text.splitlines() if line.strip()]
    verdict = verify(keys)
    if as_json:
        print_json(
            {
                "ok": verdict.ok,
                "rows": verdict.rows,
                "message": verdict.message,
                "bad_row": verdict.bad_row,
            }
        )
    elif verdict.ok:
        console.print(f"[green]✓[/green] {esc(verdict.message)}", soft_wrap=True)
    else:  # one line however narrow the terminal; names and paths are not markup
        console.print(f"[red]✗ {esc(verdict.message)}[/red]", soft_wrap=True)
    if not verdict.ok:
        raise typer.Exit(1)


@audit_app.command("show")
def audit_show(
    run_id: str = typer.Option(None, "--run", help="only events of this run"),
    limit: int = typer.Option(50, "--limit", "-n", min=1),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The newest audit events."""
    from rich.table import Table

    from ktlo.app.cli.common import short_id
    from ktlo.store.audit import events
    from ktlo.store.models import iso

    rows = events(run_id=run_id, limit=limit)
    if as_json:
        print_json(
            [
                {
                    "id": e.id,
                    "ts": iso(e.ts),
                    "actor": e.actor,
                    "action": e.action,
                    "subject": e.subject,
                    "run_id": e.run_id,
                    "details": e.details,
                    "hash": e.hash,
                }
                for e in rows
            ]
        )
        return
    table = Table()
    for col in ("id", "time", "actor", "action", "subject", "run"):
        table.add_column(col)
    for e in reversed(rows):
        table.add_row(
            str(e.id),
            iso(e.ts) or "",
            esc(e.actor),
            esc(e.action),
            esc(e.subject),
            esc(short_id(e.run_id or "")),
        )
    console.print(table)


def approve(
    run_id: str = typer.Argument(
        ..., help="the paused flow run (its id, or the start or end of it)"
    ),
    reject: bool = typer.Option(False, "--reject", help="reject instead of approve"),
    comment: str = typer.Option("", "--comment", "-m", help="why (goes to the audit trail)"),
    as_user: str = typer.Option(None, "--as", help="decide as this approver (default: user@host)"),
) -> None:
    """Approve (or reject) a run waiting at an approval step."""
    from ktlo.engine import approvals
    from ktlo.store.audit import default_actor

    waiting = [a for a in approvals.pending() if matches_id(a.flow_run_id, run_id)]
    if not waiting:
        others = ", ".join(
            f"{a.flow_run_id} ({a.runbook}/{a.step_id})" for a in approvals.pending()[:5]
        )
        fail(
            f"no approval is pending for run {run_id}" + (f"; pending: {others}" if others else "")
        )
    approval = waiting[-1]
    who = as_user or default_actor()
    if not approvals.allowed(approval, who):
        fail(
            f"{who} may not decide this approval (approvers: {', '.join(approval.approvers)}); use --as NAME"
        )
    from ktlo.orchestration.local_server import ensure_api

    ensure_api()
    from uuid import UUID

    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import resume_flow_run

    try:
        resume_flow_run(
            UUID(approval.flow_run_id),
            run_input={
                "decision": "reject" if reject else "approve",
                "approver": who,
                "comment": comment,
            },
        )
    except FlowPauseTimeout:
        fail("the approval has timed out; the run was rejected")
    except Exception as exc:
        fail(f"could not resume run {approval.flow_run_id}: {exc}")
    verb = "rejected" if reject else "approved"
    console.print(
        esc(f"{verb} {approval.runbook}/{approval.step_id} (run {approval.flow_run_id}) as {who}")
    )


@server_app.command("start")
def server_start(port: int = typer.Option(None, help="port (default 4200 or a free one)")) -> None:
    """Start the local Prefect server (if it is not running)."""
    from ktlo.orchestration import local_server

    info = local_server.start(port or local_server.DEFAULT_PORT, keep_port=port is None)
    console.print(f"Prefect server running: UI {info.ui_url}  API {info.api_url}  (pid {info.pid})")


@server_app.command("prepare")
def server_prepare(pool: str = typer.Option("ktlo", help="work pool of the deployments")) -> None:
    """Prepare the Prefect server: the process work pool and the zombie-run automation."""
    import asyncio

    from ktlo.orchestration.local_server import ensure_api
    from ktlo.orchestration.prepare import prepare

    api = ensure_api()
    for line in asyncio.run(prepare(pool)):
        console.print(esc(f"{api}: {line}"))


@server_app.command("stop")
def server_stop() -> None:
    """Stop the local Prefect server."""
    from ktlo.orchestration import local_server

    info = local_server.stop()
    console.print("stopped" if info else "not running")


@server_app.command("status")
def server_status(as_json: bool = typer.Option(False, "--json")) -> None:
    """Where the Prefect API is and whether it answers."""
    import os

    from ktlo.orchestration import local_server

    external = os.environ.get("PREFECT_API_URL")
    info = local_server.running()
    data = {
        "api_url": external or (info.api_url if info else None),
        "external": bool(external),
        "healthy": local_server.healthy(external) if external else info is not None,
        "pid": info.pid if info and not external else None,
    }
    if as_json:
        print_json(data)
    elif data["api_url"]:
        state = "[green]up[/green]" if data["healthy"] else "[red]not answering[/red]"
        console.print(f"Prefect API {data['api_url']}: {state}")
    else:
        console.print("no local Prefect server running (it starts on the first `ktlo run`)")
    if not data["healthy"]:
        raise typer.Exit(1)


def deploy(
    file: Path = typer.Option(Path("prefect.yaml"), "--file", help="the generated prefect.yaml"),
) -> None:
    """Deploy every runbook to the Prefect server at PREFECT_API_URL (`prefect deploy --all`)."""
    import os
    import subprocess
    import sys

    from ktlo.orchestration.deployments import generate

    api = os.environ.get("PREFECT_API_URL")
    if not api:
        fail(
            "PREFECT_API_URL is not set: `prefect deploy` would write the deployments into a "
            "throwaway local database. Point it at your Prefect server, e.g. "
            "PREFECT_API_URL=http://prefect.internal:4200/api ktlo deploy"
        )
    text, problems = generate()
    for p in problems:
        console.print(esc(p), soft_wrap=True)
    if problems:
        fail("invalid runbooks: fix them first (ktlo validate)")
    if not file.exists() or file.read_text(encoding="utf-8") != text:
        fail(f"{file} is stale: run `ktlo deployments --write` and commit it")
    import asyncio

    from ktlo.orchestration.prepare import prepare

    for line in asyncio.run(prepare()):
        console.print(esc(line))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "deploy",
            "--all",
            "--no-prompt",
            "--prefect-file",
            str(file),
        ],
        check=False,
    )
    if result.returncode:
        fail(f"prefect deploy failed (exit {result.returncode})")


def worker(
    pool: str = typer.Option("ktlo", "--pool", help="the work pool to take runs from"),
    name: str = typer.Option(None, "--name", help="worker name (default: Prefect picks one)"),
    limit: int = typer.Option(None, "--limit", min=1, help="at most this many runs at once"),
) -> None:
    """Start a Prefect process worker for ktlo deployments, running flows from this checkout."""
    import os
    import sys

    if not os.environ.get("PREFECT_API_URL"):
        fail("PREFECT_API_URL is not set: a worker needs the Prefect server it takes runs from")
    project = PROJECT_DIR
    env = {
        **os.environ,
        "KTLO_PROJECT_DIR": str(project),
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": os.environ.get(
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30"
        ),
    }
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    if name:
        argv += ["--name", name]
    if limit:
        argv += ["--limit", str(limit)]
    os.chdir(project)
    os.execve(sys.executable, argv, env)  # noqa: S606 - become the worker (signals reach it)


def demo() -> None:
    """A self-contained tour on the embedded default."""
    from ktlo.app.cli.demo import run_demo

    run_demo()


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
    app.add_typer(server_app, name="server")
    app.command("approve")(approve)
    app.command("demo")(demo)
    app.command("deploy")(deploy)
    app.command("worker")(worker)
    app.command("deployments")(deployments)


def deployments(
    write: bool = typer.Option(False, "--write", help="regenerate prefect.yaml"),
    check: bool = typer.Option(False, "--check", help="exit 1 if prefect.yaml is stale"),
    path: Path = typer.Option(
        Path("prefect.yaml"), "--file", help="the prefect.yaml to write or check"
    ),
) -> None:
    """Regenerate or check prefect.yaml: one deployment per runbook."""
    from ktlo.orchestration.deployments import generate

    if write == check:
        fail("give exactly one of --write or --check")
    text, problems = generate()
    for p in problems:
        console.print(esc(p), soft_wrap=True)
    if problems:
        fail(
            f"{len({p.path for p in problems})} runbook(s) are invalid and do not become deployments"
        )
    current = path.read_text(encoding="utf-8") if path.exists() else None
    if check:
        if current != text:
            fail(f"{path} is stale: run `ktlo deployments --write`")
        console.print(f"{path} is up to date")
        return
    if current == text:
        console.print(f"{path} is up to date")
        return
    path.write_text(text, encoding="utf-8")
    console.print(f"wrote {path}")
