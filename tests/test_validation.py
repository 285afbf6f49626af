"""Runbook validation: every problem is reported as path:line: message, before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktlo.errors import RunbookInvalid
from ktlo.runbook.loader import load_runbook
from tests.conftest import Home

VALID = """
name: ok
description: fine
parameters:
  keep: {type: integer, default: 7, description: copies}
  mode: {type: string, enum: [fast, slow], default: fast}
schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}
steps:
  - id: first
    uses: shell
    with: {command: [echo, "{{ params.keep }}"]}
  - id: second
    uses: log
    if: "{{ params.keep < 3 }}"
    with: {message: "{{ steps.first.output.stdout }} {{ params.mode }}"}
  - id: third
    uses: log
    needs: [first]
    on_failure: continue
    retries: 2
    timeout_s: 5
    with: {message: "{{ steps['first'].output.exit_code }}"}
"""


def problems_of(home: Home, text: str) -> list[str]:
    path = home.runbook("rb", text)
    with pytest.raises(RunbookInvalid) as info:
        load_runbook(path)
    return [str(p).replace(str(path), "RB") for p in info.value.problems]


def test_valid_runbook_loads(home: Home) -> None:
    rb = load_runbook(home.runbook("ok", VALID))
    assert [s.id for s in rb.steps] == ["first", "second", "third"]
    assert rb.dependencies() == {"first": [], "second": ["first"], "third": ["first"]}
    assert rb.schedules[0].cron == "0 2 * * *"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi}\n    retry: 2\n",
            "RB:6: step 'a': unknown key 'retry' (did you mean 'retries'?)",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: shel\n    with: {command: ls}\n",
            "RB:4: step 'a': unknown step type 'shel'; did you mean 'shell'?",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: http.request\n    with: {url: 'ftp://x'}\n",
            "RB:5: step 'a': with.url: url must start with http:// or https://",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi, colour: red}\n",
            "RB:5: step 'a': with: unknown key 'colour'",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    with: {}\n",
            "RB:5: step 'a': with.message: required",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    needs: [b]\n    with: {message: hi}\n",
            "RB:5: step 'a' needs unknown step 'b'",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi}\n"
            "  - id: a\n    uses: log\n    with: {message: hi}\n",
            "RB:6: duplicate step id 'a'",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    needs: [b]\n    with: {message: hi}\n"
            "  - id: b\n    uses: log\n    needs: [a]\n    with: {message: hi}\n",
            "RB:5: dependency cycle: a → b → a",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    with: {message: '{{ params.nope }}'}\n",
            "RB:5: step 'a': template uses unknown parameter 'nope' (parameters: none declared)",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    with: {message: '{{ steps.zz.output }}'}\n",
            "RB:5: step 'a': template uses unknown step 'zz'",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    needs: []\n    with: {message: hi}\n"
            "  - id: b\n    uses: log\n    needs: []\n    with: {message: '{{ steps.a.output.message }}'}\n",
            "RB:10: step 'b': step 'b' uses the result of step 'a', which is not guaranteed to run before it: add 'a' to its needs",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: shell\n    with: {command: ls}\n"
            "  - id: b\n    uses: log\n    with: {message: '{{ steps.a.output.stdot }}'}\n",
            "RB:8: step 'b': step 'a' (shell) has no output 'stdot' (outputs: exit_code, stdout, stderr, duration_ms)",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    with: {message: '{{ foo.bar }}'}\n",
            "RB:5: step 'a': template uses unknown name 'foo'",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    with: {message: '{{ 1 + }}'}\n",
            "RB:5: step 'a': template syntax error: unexpected 'end of print statement'",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    if: params.n >\n    with: {message: hi}\n",
            "RB:5: step 'a': template syntax error: unexpected 'end of print statement'",
        ),
        (
            'name: x\nsteps:\n  - id: a\n    uses: log\n    with: {message: "{{ incident.labels }}"}\n',
            "RB:5: step 'a': template uses 'incident' but the runbook has no triggers",
        ),
        (
            'name: x\nsteps:\n  - id: a\n    uses: log\n    with: {message: "{{ secret(name) }}"}\n',
            "RB:5: step 'a': secret() takes a literal name, like secret('orders-dsn')",
        ),
        (
            "name: x\nparameters:\n  n: {type: integer, default: lots}\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi}\n",
            "RB:3: parameter 'n': default 'lots': Input should be a valid integer, unable to parse string as an integer",
        ),
        (
            "name: x\nschedule: {cron: '61 * * * *'}\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi}\n",
            "RB:2: schedule.cron: invalid cron expression '61 * * * *'",
        ),
        (
            "name: x\nschedule: {interval_s: 60, timezone: Mars/Olympus}\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi}\n",
            "RB:2: schedule.timezone: unknown timezone 'Mars/Olympus'",
        ),
        (
            "name: x\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi}\n  - id: b\n  uses: log\n",
            "RB:7: YAML syntax error",
        ),
        (
            "name: x\nname: y\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi}\n",
            "RB:2: duplicate key 'name'",
        ),
        (
            "name: Bad Name\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi}\n",
            "RB:1: name: String should match pattern",
        ),
        (
            "name: x\nsteps: []\n",
            "RB:2: steps: List should have at least 1 item",
        ),
        (
            "name: x\nnotify: {on_failure: [nobody-knows]}\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi}\n",
            "RB:2: unknown notification channel 'nobody-knows'",
        ),
    ],
)
def test_invalid_runbooks_name_the_line(home: Home, text: str, expected: str) -> None:
    found = problems_of(home, text)
    assert any(p.startswith(expected) for p in found), found


def test_templated_inputs_are_type_checked_after_rendering_only(home: Home) -> None:
    text = """
    name: x
    parameters:
      t: {type: integer, default: 3}
    steps:
      - id: a
        uses: http.request
        with: {url: "http://127.0.0.1:1/", timeout_s: "{{ params.t }}"}
    """
    assert load_runbook(home.runbook("x", text)).steps[0].with_["timeout_s"] == "{{ params.t }}"


def test_all_problems_are_reported_at_once(home: Home) -> None:
    text = (
        "name: x\nsteps:\n  - id: a\n    uses: nope\n    with: {}\n"
        "  - id: b\n    uses: log\n    needs: [zz]\n    with: {message: '{{ params.p }}'}\n"
    )
    found = problems_of(home, text)
    assert len(found) == 3, found


def test_shipped_runbooks_are_valid() -> None:
    from ktlo.runbook.loader import load_all

    runbooks, problems = load_all(Path(__file__).resolve().parents[1] / "runbooks")
    assert not problems, problems
    assert runbooks
