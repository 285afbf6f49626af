"""Odd text never crashes the CLI: data with rich markup, terminal escapes, very long or
unicode text goes through every command that prints it, literally (control characters shown
as \\xNN), and the error handler too."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Home
from tests.helpers import cli
from tests.webhook_helpers import Receiver, alertmanager, prom_alert

HOSTILE = "[/x] [bold [red]x[/red] \\ \x1b[31mred\x1b[0m ünïcødé ✓ 🚨 :fire:"
LONG = "L" * 5000
SHOWN = ("[/x]", "[bold", "[red]x[/red]", "\\x1b[31mred", "ünïcødé ✓ 🚨 :fire:")


def _q(text: str) -> str:
    """A YAML double-quoted string (JSON's, without surrogate pairs YAML does not take)."""
    return json.dumps(text, ensure_ascii=False)


RUNBOOK = f"""
name: hostile
description: {_q(HOSTILE)}
triggers:
  - source: alertmanager
    match: {{alertname: Hostile}}
steps:
  - id: say
    uses: log
    with: {{message: {_q(HOSTILE + " " + LONG)}}}
  - id: fail
    uses: shell
    on_failure: continue
    with: {{command: [sh, -c, {_q(f"printf '%s' {_q(HOSTILE)} >&2; exit 3")}]}}
"""


def _clean(result: object, *, code: int = 0, shows: bool = True) -> str:
    stdout, stderr = result.stdout, result.stderr  # type: ignore[attr-defined]
    assert result.returncode == code, (result.returncode, stdout[-3000:], stderr[-3000:])  # type: ignore[attr-defined]
    assert "MarkupError" not in stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert "internal error" not in stderr
    if shows:
        assert "\x1b[31m" not in stdout  # an escape from the data never reaches the terminal
        assert "[/x]" in stdout
    return str(stdout)


def test_hostile_text_through_every_command(home: Home, prefect_api: str, tmp_path: Path) -> None:
    home.runbook("hostile", RUNBOOK)
    ran = cli("run", "hostile", env=home.env)
    out = _clean(ran)  # succeeded with errors: exit 0, and the table printed
    assert "succeeded_with_errors" in out
    for part in SHOWN[:2]:
        assert part in out
    _clean(cli("run", "hostile", "--dry-run", env=home.env))
    _clean(cli("list", env=home.env))
    listed = _clean(cli("history", env=home.env), shows=False)
    assert "hostile" in listed
    run_id = json.loads(cli("history", "--json", env=home.env).stdout)["runs"][0]["id"]
    one = _clean(cli("history", run_id, env=home.env))
    for part in SHOWN:
        assert part in one.replace("\n", "").replace("│", "").replace(" ", "") or part in one

    receiver = Receiver()
    try:
        alert = prom_alert("Hostile", "fp-hostile", instance="x")
        alert["annotations"]["summary"] = HOSTILE
        alert["labels"]["severity"] = "[/x]"
        assert receiver.post("alertmanager", alertmanager(alert)).status_code == 202
    finally:
        receiver.close()
    _clean(cli("incidents", env=home.env))
    shown = _clean(cli("incidents", "show", "alertmanager:fp-hostile", env=home.env))
    assert HOSTILE.replace("\x1b", "\\x1b") in shown
    _clean(cli("audit", "show", env=home.env), shows=False)

    # the error handler: data in an error message is printed as it is
    for ref in ("[/x]", f"[bold \x1b[31m {LONG}"):
        failed = cli("run", ref, env=home.env)
        assert failed.returncode == 1
        assert failed.stderr.startswith("error: "), failed.stderr
        assert len(failed.stderr.splitlines()) == 1
        assert "\x1b[31m" not in failed.stderr
        assert ref[:5].replace("\x1b", "\\x1b") in failed.stderr
    bad = home.runbook("bad", f"name: bad\nsteps:\n  - id: a\n    uses: {_q(HOSTILE)}\n")
    invalid = cli("validate", str(bad), env=home.env)
    assert invalid.returncode == 1
    assert "[/x]" in invalid.stdout
    assert "MarkupError" not in invalid.stdout + invalid.stderr
