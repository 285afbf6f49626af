"""Shell commands as templates, run by a real /bin/sh: every `{{ }}` value stays text.

The step-level attacks are in test_security_steps.py; these cover each quoting context the
scanner in ktlo.runbook.shelltemplate tells apart, quickly and without Prefect.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ktlo.runbook.rendering import (
    AsShell,
    AsUrl,
    AsWords,
    problems,
    render_inputs,
    untrusted_authority,
)
from ktlo.runbook.templating import TemplateError

HOSTILE = "$(touch {m}) `touch {m}` ${{X:=1}} '\"; touch {m}\nEOF\ntouch {m} \\ * ~"


def _sh(command: str, value: str) -> str:
    rendered = render_inputs(
        {"command": command}, {"command": AsShell(variables="env")}, {"v": value, "l": [value, "b"]}
    )
    env = {**os.environ, **rendered.get("env", {})}
    done = subprocess.run(
        ["/bin/sh", "-c", rendered["command"]], env=env, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("printf '%s|' {{ v }}", "{v}|"),
        ("printf '%s|' x{{ v }}y", "x{v}y|"),
        ("printf '%s|' 'x{{ v }}y'", "x{v}y|"),
        ("printf '%s|' \"x{{ v }}y\"", "x{v}y|"),
        ("printf '%s|' $(printf '%s' {{ v }})", None),  # unquoted $( ) output is split by sh
        ("printf '%s|' \"$(printf '%s' '{{ v }}')\"", "{v}|"),
        ("printf '%s|' \"`printf '%s' {{ v }}`\"", None),
        ("cat <<EOF\n{{ v }}\nEOF", "{v}\n"),
        ("cat <<-EOF\n\tline {{ v }}\n\tEOF\nprintf '%s|' {{ v }}", "line {v}\n{v}|"),
        ("cat <<'EOF'\n$HOME\nEOF\nprintf '%s|' {{ v }}", "$HOME\n{v}|"),
        ("# a comment {{ v }} '\nprintf '%s|' {{ v }}", "{v}|"),
        ("{% for x in l %}printf '%s|' {{ x }}; {% endfor %}", "{v}|b|"),
        ("{% if v %}printf '%s|' \"{{ v }}\"{% else %}true{% endif %}", "{v}|"),
        ("printf '%s|' {{ v | shell_quote }}", None),
        ("sh -c \"printf '%s|' {{ v | shell_quote }}\"", "{v}|"),
    ],
)
def test_a_value_reaches_sh_as_text(command: str, expected: str | None, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    value = HOSTILE.format(m=marker)
    out = _sh(command, value)
    assert not marker.exists(), out
    if expected is not None:
        assert out == expected.replace("{v}", value)


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("echo $(( {{ v }} + 1 ))", "$(( ))"),
        ("echo ${X:-{{ v }}}", "${...}"),
        ("echo \\{{ v }}", "after a backslash"),
        ("cat <<'EOF'\n{{ v }}\nEOF", "quoted delimiter"),
        ("cat <<{{ v }}\nx\n", "here-document delimiter"),
        ("{% if v %}'{% endif %}echo {{ v }}", "must close every quote"),
        ("{% filter upper %}echo {{ v }}{% endfilter %}", "not supported"),
    ],
)
def test_a_place_no_reference_can_be_safe_is_refused(command: str, reason: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(reason)):
        render_inputs({"command": command}, {"command": AsShell(variables="env")}, {"v": "1"})
    found = problems({"command": command}, {"command": AsShell(variables="env")})
    assert found
    assert found[0][1].startswith("with.command: ")


def test_string_command_words_are_split_before_rendering() -> None:
    ctx = {"v": "a --no-block 'b' c", "n": 3, "l": ["x y", "z"]}
    how = {"command": AsWords()}
    rendered = render_inputs(
        {"command": "tool -n {{ n }} -- {{ v }} 'k={{ v }}' {{ l }}"}, how, ctx
    )
    assert rendered["command"] == ["tool", "-n", 3, "--", ctx["v"], f"k={ctx['v']}", "x y", "z"]
    assert render_inputs({"command": "ls -l"}, how, ctx) == {"command": "ls -l"}
    found = problems({"command": "x {% if n %}-a -b{% endif %}"}, how)
    assert "must open and close inside one word" in found[0][1]


@pytest.mark.parametrize(
    ("url", "untrusted"),
    [
        ("{{ incident.annotations.url }}", True),
        ("http://{{ incident.labels.host }}/x", True),
        ("http://h:{{ steps.a.output.port }}/x", True),
        ("{{ incident.labels.scheme }}://h/x", True),
        ("http://{{ params.host }}{{ incident.labels.path }}", True),
        ("http://{{ params.host }}/{{ incident.labels.path }}", False),
        ("https://h/?q={{ steps.a.output.text }}", False),
        ("{{ env.PREFECT_API_URL }}/health", False),
    ],
)
def test_which_urls_take_their_host_from_untrusted_data(url: str, untrusted: bool) -> None:
    assert untrusted_authority(url) is untrusted


def test_allowed_hosts_cannot_come_from_the_alert() -> None:
    how = {"url": AsUrl(allowed_hosts="allowed_hosts")}
    raw = {"url": "{{ incident.u }}", "allowed_hosts": "{{ [incident.h] }}"}
    ctx = {"incident": {"u": "http://evil.test/", "h": "evil.test"}}
    with pytest.raises(TemplateError, match="must not use incident or step data"):
        render_inputs(raw, how, ctx)
    assert problems(raw, how)[0][1] == "with.allowed_hosts must not use incident or step data"
    raw["allowed_hosts"] = ["*.example.com"]
    ctx["incident"]["u"] = "http://api.example.com/"
    assert render_inputs(raw, how, ctx)["url"] == "http://api.example.com/"
    ctx["incident"]["u"] = "http://example.com.evil.test/"
    with pytest.raises(TemplateError, match=re.escape("host 'example.com.evil.test'")):
        render_inputs(raw, how, ctx)


def test_the_host_checked_is_the_host_httpx_would_call() -> None:
    how = {"url": AsUrl(allowed_hosts="allowed_hosts")}
    raw = {"url": "{{ incident.u }}", "allowed_hosts": "{{ params.hosts }}"}
    ctx: dict[str, Any] = {
        "incident": {"u": "http://evil.test\\@127.0.0.1/"},
        "params": {"hosts": ["evil.test"]},
    }
    with pytest.raises(TemplateError, match=re.escape("host '127.0.0.1'")):
        render_inputs(raw, how, ctx)
    ctx["params"]["hosts"] = ()  # not a list: nothing is allowed, not everything
    with pytest.raises(TemplateError, match=re.escape("(empty)")):
        render_inputs(raw, how, ctx)
