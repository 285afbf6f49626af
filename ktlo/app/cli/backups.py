"""`ktlo backups list|show|verify` and `ktlo restore`: the backup catalog from a terminal.

Options in, rendering out; the work is `tasks.backup.commands`, the same code as the
`backup.verify` and `restore.<kind>` steps, run in this process without Prefect, with a
progress bar on stderr (stdout stays clean for `--json`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer

from ktlo.app.cli.common import ago, console, err_console, esc, iso, print_json

backups_app = typer.Typer(help="The backup catalog.", no_args_is_help=True)
T = TypeVar("T")


class BarProgress:
    """The backup package's progress protocol drawn as a rich progress bar on stderr.

    The bar appears with the first `start`, so a command that fails early prints only its
    one-line error.
    """

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        )
        self._task: Any = None
        self._live = False

    def start(self, description: str, total: int | None) -> None:
        if not self._live:
            self._progress.start()
            self._live = True
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, done: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=done)

    def stop(self) -> None:
        if self._live:
            self._progress.stop()
            self._live = False


@contextmanager
def _progress() -> Iterator[Any]:
    """A bar on a terminal; nothing when stderr is a pipe or a file."""
    from tasks.backup.stream import NoProgress

    if not err_console.is_terminal:
        yield NoProgress()
        return
    bar = BarProgress()
    try:
        yield bar
    finally:
        bar.stop()


def _run(work: Callable[[Any], T]) -> T:
    """Run backup code here with a progress bar; Ctrl-C stops the tools it started."""
    from tasks.backup.jobs import in_this_thread

    with _progress() as bar:
        return in_this_thread(work, bar)


def _entry_json(e: Any) -> dict[str, Any]:
    return {
        "id": e.id,
        "source": e.source,
        "kind": e.kind,
        "status": e.status,
        "created_at": iso(e.created_at),
        "completed_at": iso(e.completed_at),
        "location": e.location,
        "size": e.size,
        "sha256": e.sha256,
        "input_bytes": e.input_bytes,
        "compression": e.compression,
        "encryption": e.encryption,
        "tool_versions": e.tool_versions,
        "verify_status": e.verify_status,
        "verified_at": iso(e.verified_at),
        "verify_deep": e.verify_deep,
        "verify_error": e.verify_error,
        "error": e.error,
        "run_id": e.run_id,
    }


def _verified(e: Any) -> str:
    if e.verify_status == "ok":
        return f"[green]✓[/] {'deep ' if e.verify_deep else ''}{ago(e.verified_at)}"
    if e.verify_status == "failed":
        return "[red]✗ failed[/]"
    return "[dim]-[/]"


@backups_app.command("list")
def list_backups(
    source: str = typer.Option(None, "--source", "-s", help="only this source"),
    show_all: bool = typer.Option(
        False, "--all", "-a", help="also failed, interrupted and pruned backups"
    ),
    limit: int = typer.Option(100, "--limit", "-n", min=1),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Backups in the catalog, newest first."""
    from rich.table import Table

    from tasks.backup import commands
    from tasks.backup.model import human_bytes

    rows = commands.listing(source, show_all=show_all, limit=limit)
    if as_json:
        print_json({"backups": [_entry_json(e) for e in rows]})
        return
    if not rows:
        console.print(esc("no backups" + (f" of {source}" if source else "") + " in the catalog"))
        return
    table = Table(title="Backups", title_justify="left")
    for col in ("id", "source", "kind", "created", "size", "verified"):
        table.add_column(col, no_wrap=col != "source", overflow="fold")
    if show_all:
        table.add_column("status")
    table.add_column("location", overflow="fold")
    for e in rows:
        cells = [
            e.id,
            e.source,
            e.kind + (" 🔒" if e.encryption else ""),
            ago(e.created_at),
            human_bytes(e.size) if e.size is not None else "",
            _verified(e),
        ]
        if show_all:
            cells.append(e.status + (f": {e.error}" if e.error else ""))
        table.add_row(*(esc(cell) for cell in cells), esc(e.location))
    console.print(table)


@backups_app.command("show")
def show_backup(
    backup_id: str = typer.Argument(..., help="a backup id or a unique prefix"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One catalog entry in full."""
    from tasks.backup import commands

    data = _entry_json(commands.find(backup_id))
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        if value not in (None, {}, ""):
            console.print(f"[bold]{esc(key)}[/bold]: {esc(value)}", highlight=False)


@backups_app.command("verify")
def verify_backup(
    backup_id: str = typer.Argument(..., help="a backup id, a unique prefix, or 'latest'"),
    source: str = typer.Option(None, "--source", "-s", help="with 'latest': which source"),
    deep: bool = typer.Option(False, "--deep", help="also restore into a scratch place and check"),
    scratch_dsn: str = typer.Option(
        None, "--scratch-dsn", help="--deep, databases: server for a scratch database"
    ),
    scratch_dir: str = typer.Option(None, "--scratch-dir", help="--deep, files: where to extract"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-hash a stored backup (exit 1 if it is corrupt); --deep also restores and checks it."""
    from tasks.backup import commands

    out = _run(
        lambda job: commands.verify(
            job,
            backup_id,
            source=source,
            deep=deep,
            scratch_dsn=scratch_dsn,
            scratch_dir=scratch_dir,
        )
    )
    if as_json:
        print_json(out.model_dump(mode="json"))
        return
    how = "restored and checked" if deep else "sha256 matches"
    console.print(f"[green]✓[/green] {esc(f'backup {out.backup_id} ({out.source}): {how}')}")
    for key, value in out.checks.items():
        console.print(esc(f"  {key}: {value}"))


def restore(
    backup_id: str = typer.Argument(..., help="a backup id, a unique prefix, or 'latest'"),
    to: str = typer.Option(
        ...,
        "--to",
        help="a directory or file path; for databases a DSN (postgresql://… / mysql://…)",
    ),
    source: str = typer.Option(None, "--source", "-s", help="with 'latest': which source"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty target"),
    no_owner: bool = typer.Option(False, "--no-owner", help="PostgreSQL: skip ownership/grants"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Restore a backup into a target directory, file or database."""
    from tasks.backup import commands

    out = _run(
        lambda job: commands.restore(
            job, backup_id, to, source=source, overwrite=overwrite, no_owner=no_owner
        )
    )
    if as_json:
        print_json(out.model_dump(mode="json"))
        return
    from tasks.backup.model import human_bytes

    console.print(
        f"[green]✓[/green] restored {esc(out.backup_id)} ({esc(out.source)}) → {esc(out.target)}: "
        f"{human_bytes(out.bytes)} in {out.duration_ms / 1000:.1f} s",
        markup=True,
        highlight=False,
    )
    for key, value in out.checks.items():
        console.print(esc(f"  {key}: {value}"))


def register(app: typer.Typer) -> None:
    app.add_typer(backups_app, name="backups")
    app.command("restore")(restore)
