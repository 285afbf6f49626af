"""A health sweep is checked when the runbook is validated: conditions against their check
type, check types and keys, dependencies, channels, remediation runbooks — each problem on
its line, before anything runs."""

from __future__ import annotations

import pytest

from ktlo.errors import RunbookInvalid
from ktlo.runbook.loader import load_runbook
from tests.conftest import Home
from tests.helpers import REPO, cli

RUNBOOK = """
name: sweep-lines
steps:
  - id: sweep
    uses: health.sweep
    with:
      checks:
        - name: api
          type: http
          url: "http://127.0.0.1:1/"
          conditions:
            - status == 200
            - stauts == 200
          warn: ['body matches "("']
          depends_on: [db]
        - name: api
          type: tcp
          hots: example
          port: 1
          alert: [nochannel]
        - name: lookup
          type: dnss
          query: x
        - name: d
          type: disk
          depends_on: [e]
          remediate: no-such-runbook
          conditions: ['used_percent < "90"', "cert_days > 14"]
        - name: e
          type: disk
          depends_on: [d]
          maintenance:
            - {cron: "0 3 * * *"}
            - {cron: "61 * * * *", duration_s: 60}
        - name: t
          type: tcp
          host: "{{ params.host }}"
          port: 5432
          conditions: ["connected == true", "response_time_ms < 100"]
"""


def problems(home: Home, text: str) -> list[str]:
    path = home.runbook("sweep-lines", text)
    with pytest.raises(RunbookInvalid) as err:
        load_runbook(path)
    return [f"{p.line}: {p.message}" for p in err.value.problems]


def test_every_problem_is_reported_on_its_line(home: Home) -> None:
    got = problems(home, RUNBOOK)
    prefix = "step 'sweep': "
    expected = [
        "12: " + prefix + "check 'api': unknown placeholder 'stauts' for an http check "
        "(did you mean 'status'?); http checks know: connected, response_time_ms, status, "
        "body, body.<json path>, headers.<name>",
        "13: " + prefix + "check 'api': invalid regular expression '(': missing ), "
        "unterminated subpattern at position 0",
        "14: " + prefix + "check 'api' depends on unknown check 'db' (did you mean 'd'?); "
        "depends_on names checks of the same sweep",
        "15: " + prefix + "duplicate check name 'api' (see check 0)",
        "15: " + prefix + "with.checks.1.host: required",
        "17: " + prefix + "with.checks.1.hots: unknown key for a tcp check (did you mean 'host'?)",
        "19: " + prefix + "unknown notification channel 'nochannel' (define it in KTLO_CHANNELS "
        f"or {home.path / 'channels.yaml'}; known: none defined)",
        "21: " + prefix + "with.checks.2.type: unknown check type 'dnss' (did you mean 'dns'?)",
        "25: " + prefix + "dependency cycle: d → e → d",
        "26: " + prefix + f"remediate: no runbook named 'no-such-runbook' in {home.runbooks}",
        "27: " + prefix + "check 'd': '<' compares numbers; '90' is not a number",
        "27: " + prefix + "check 'd': unknown placeholder 'cert_days' for a disk check; disk "
        "checks know: used_percent, free_bytes, free_gb, total_bytes, inodes_used_percent, "
        "response_time_ms",
        "32: " + prefix + "with.checks.4.maintenance.0.duration_s: required",
        "33: " + prefix + "with.checks.4.maintenance.1.cron: invalid cron expression "
        "'61 * * * *': Bad minute",
        "36: " + prefix + "template uses unknown parameter 'host' (parameters: none declared)",
    ]
    assert sorted(got) == sorted(expected)


def test_templated_values_are_checked_when_rendered(home: Home) -> None:
    path = home.runbook(
        "templated",
        """
        name: templated
        parameters:
          port: {type: integer, default: 5432}
          max_ms: {type: integer, default: 500}
        steps:
          - id: sweep
            uses: health.sweep
            with:
              checks:
                - name: db
                  type: tcp
                  host: 127.0.0.1
                  port: "{{ params.port }}"
                  conditions: ["response_time_ms < {{ params.max_ms }}"]
        """,
    )
    load_runbook(path)  # valid: the templated port and condition are checked at run time


def test_shipped_health_sweep_is_valid_and_deployed() -> None:
    rb = load_runbook(REPO / "runbooks" / "health-sweep.yaml")
    assert rb.schedules[0].interval_s == 60
    types = {c["type"] for c in rb.steps[0].with_["checks"]}
    assert {"http", "postgres", "mysql", "redis", "disk"} <= types
    out = cli("deployments", "--check")
    assert out.returncode == 0, out.stdout + out.stderr


def test_cli_validate_reports_the_condition_line(home: Home) -> None:
    home.runbook(
        "typo",
        """
        name: typo
        steps:
          - id: sweep
            uses: health.sweep
            with:
              checks:
                - name: cache
                  type: redis
                  url: redis://127.0.0.1:6379/0
                  conditions: ['reply == "PONG"']
        """,
    )
    out = cli("validate", env=home.env)
    assert out.returncode == 1
    assert (
        "typo.yaml:10: step 'sweep': check 'cache': unknown placeholder 'reply'"
        in out.stdout + out.stderr
    )
