"""Console helpers shared by the subcommands."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn

from rich.console import Console
from rich.markup import escape

from ktlo.status import RunStatus, StepStatus

# No emoji codes either: `:fire:` in an alert summary stays as sent.
console = Console(highlight=False, emoji=False)
err_console = Console(stderr=True, highlight=False, emoji=False)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def esc(value: object) -> str:
    """Data (step outputs, alert text, runbook names, errors) as console markup.

    Every piece of data a command prints goes through here: rich's markup is escaped (a
    `[/x]` in a step output raised MarkupError and crashed `ktlo run` after its run had
    succeeded), and terminal control characters are shown as `\\xNN`, so data can
    neither break the markup nor drive the terminal. Newlines and tabs stay.
    """
    return escape(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value)))


STATUS_STYLE: dict[str, str] = {
    RunStatus.SUCCEEDED: "green",
    RunStatus.SUCCEEDED_WITH_ERRORS: "yellow",
    RunStatus.FAILED: "red",
    RunStatus.CRASHED: "red",
    RunStatus.RUNNING: "cyan",
    StepStatus.SKIPPED: "dim",
    StepStatus.NOT_RUN: "dim",
}


def fail(message: str, code: int = 1) -> NoReturn:
    """One `error:` line per line of `message` (plain text, never markup) and exit."""
    for line in message.splitlines() or [""]:
        err_console.print(f"[red]error:[/red] {esc(line)}", soft_wrap=True, highlight=False)
    sys.exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")


def styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{esc(status)}[/]"


def ago(ts: datetime | None) -> str:
    if ts is None:
        return ""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    seconds = (datetime.now(UTC) - ts).total_seconds()
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 129600:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def iso(ts: datetime | None) -> str | None:
    """`ktlo.store.models.iso`, imported when first called: the store (SQLAlchemy) is not
    imported by every command that merely registers with the CLI."""
    from ktlo.store.models import iso as stored_iso

    return stored_iso(ts)


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def short_id(run_id: str) -> str:
    """Prefect's flow run ids are time-ordered (UUIDv7): their random tail tells runs apart."""
    return run_id[-12:]


def matches_id(run_id: str, ref: str) -> bool:
    """A run id given whole, by its start or end, or as shown (`short_id`), also when a
    narrow terminal cut the shown id to its start (with or without the `…`)."""
    ref = ref.strip().strip("…").lower()
    return bool(ref) and (
        run_id.startswith(ref) or run_id.endswith(ref) or short_id(run_id).startswith(ref)
    )
