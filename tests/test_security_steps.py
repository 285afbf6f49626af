"""Alert data never becomes a command, a URL host or an option; steps never see ktlo's secrets.

Each test replays an attack from issue 10 against real runs: shell commands that really run,
loopback HTTP servers that count what reached them, the real `ktlo` CLI and `ktlo serve`.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text

from tests.conftest import Home, require_service
from tests.helpers import REPO, Receiver, cli, start_receiver
from tests.serve_helpers import Served, wait_until
from tests.webhook_helpers import TOKEN, free_port

pytestmark = pytest.mark.timeout(600)

TRIGGERED = """
name: {name}
triggers:
  - source: generic
    match: {{event: attack}}
"""


def _triggered(home: Home, name: str, steps: str) -> Path:
    return home.runbook(name, TRIGGERED.format(name=name) + steps)


def _incident(**labels: str) -> dict[str, Any]:
    return {"key": "generic:x", "summary": "attack", "labels": labels, "annotations": {}}


def test_shell_true_runs_an_alert_label_as_text_never_as_code(
    home: Home, run: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    label = f"$(id > {marker})"
    tricky = f"`touch {marker}`'\"; touch {marker}\nEOF\ntouch {marker}"
    path = _triggered(
        home,
        "quoting",
        """
steps:
  - id: bare
    uses: shell
    with: {shell: true, command: "echo host={{ incident.labels.instance }}"}
  - id: single
    uses: shell
    with: {shell: true, command: "echo 'host={{ incident.labels.tricky }}'"}
  - id: double
    uses: shell
    with: {shell: true, command: "echo \\"host={{ incident.labels.tricky }}\\""}
  - id: heredoc
    uses: shell
    with:
      shell: true
      command: |
        cat <<EOF
        host={{ incident.labels.tricky }}
        EOF
  - id: nested
    uses: shell
    with: {shell: true, command: "sh -c \\"echo host={{ incident.labels.tricky | shell_quote }}\\""}
""",
    )
    result = run(path, incident=_incident(instance=label, tricky=tricky))
    assert not marker.exists()
    assert result.status == "succeeded", result.run.error
    assert result.steps["bare"].output["stdout"] == f"host={label}\n"
    for step in ("single", "double", "heredoc", "nested"):
        assert result.steps[step].output["stdout"] == f"host={tricky}\n", step


def test_string_command_keeps_a_label_as_one_argument(home: Home, run: Any) -> None:
    path = _triggered(
        home,
        "words",
        """
steps:
  - id: argv
    uses: shell
    with: {command: "sh -c 'for a; do echo \\"[$a]\\"; done' argv0 -- {{ incident.labels.service }} 'x {{ incident.labels.service }}'"}
""",
    )
    result = run(path, incident=_incident(service="a --no-block b"))
    assert result.status == "succeeded", result.run.error
    assert result.steps["argv"].output["stdout"].splitlines() == [
        "[--]",
        "[a --no-block b]",
        "[x a --no-block b]",
    ]


def _shipped(home: Home, name: str, **defaults: Any) -> Path:
    data = yaml.safe_load((REPO / "runbooks" / f"{name}.yaml").read_text())
    for key, value in defaults.items():
        data["parameters"][key]["default"] = value
    path = home.runbooks / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_shipped_service_down_ends_options_and_refuses_unlisted_health_hosts(
    home: Home, run: Any, receiver: Receiver
) -> None:
    service = start_receiver()
    try:
        shim = ["sh", "-c", 'printf "[%s]" "$@"', "restart-shim"]
        incident = {
            "key": "generic:web",
            "summary": "web is down",
            "labels": {"event": "service_down", "service": "--no-block"},
            "annotations": {"health_url": f"{service.url}/health"},
        }
        common = {
            "restart_command": shim,
            "settle_s": 0,
            "notify_to": [f"json://127.0.0.1:{receiver.port}/hook"],
        }
        path = _shipped(home, "incident-service-down", health_hosts=["127.0.0.1"], **common)
        allowed = run(path, incident=incident)
        assert allowed.status == "succeeded", allowed.run.error
        assert allowed.steps["restart"].output["stdout"] == "[--][--no-block]"
        fetched = len(service.requests)
        assert fetched >= 2  # health before and after

        path = _shipped(home, "incident-service-down", health_hosts=["localhost"], **common)
        refused = run(path, incident=incident)
        assert refused.status == "failed"
        error = refused.steps["health-before"].error
        assert "host '127.0.0.1'" in error, error
        assert "with.allowed_hosts" in error, error
        assert len(service.requests) == fetched  # nothing was sent
        assert refused.steps["restart"].status == "not_run"
    finally:
        service.close()


def test_validate_and_plan_show_what_alert_data_can_reach(home: Home) -> None:
    home.runbook(
        "unsafe",
        TRIGGERED.format(name="unsafe")
        + """
steps:
  - id: fetch
    uses: http.request
    with: {url: "http://{{ incident.labels.host }}:8080/status"}
  - id: math
    uses: shell
    with: {shell: true, command: "echo $(( {{ incident.labels.n }} + 1 ))"}
  - id: flag
    uses: shell
    with: {shell: "{{ incident.labels.raw == 'yes' }}", command: "echo hi"}
""",
    )
    checked = cli("validate", "--json", str(home.runbooks / "unsafe.yaml"), env=home.env)
    assert checked.returncode == 1
    messages = [p["message"] for p in json.loads(checked.stdout)["problems"]]
    assert any("with.url: its host comes from incident or step data" in m for m in messages)
    assert any("$(( ))" in m for m in messages), messages
    assert any("shell must be true or false, not a template" in m for m in messages)

    path = _triggered(
        home,
        "safe",
        """
steps:
  - id: echo
    uses: shell
    with: {shell: true, command: "echo host={{ incident.labels.instance }}"}
  - id: fetch
    uses: http.request
    with: {url: "http://{{ incident.labels.host }}:8080/status", allowed_hosts: [db-1.internal]}
""",
    )
    assert cli("validate", str(path), env=home.env).returncode == 0
    plan = cli("run", str(path), "--dry-run", env={**home.env, "COLUMNS": "300"})
    assert plan.returncode == 0, plan.stderr
    assert 'echo host="${KTLO_ARG_1}"' in plan.stdout
    assert '"KTLO_ARG_1": "<incident.labels.instance>"' in plan.stdout


SECRET_VALUES = {
    "KTLO_WEBHOOK_TOKEN": "hook-tok-83jd-secret",
    "KTLO_AUDIT_KEY": "audit-key-29xk-secret",
    "KTLO_SECRET_NEVER_USED": "unused-val-71qp-secret",
    "KTLO_SECRET_PASSED": "passed-val-55zr-secret",
    "PREFECT_API_KEY": "pf-key-40mm-secret",
}
DB_PASSWORD = "db-pw-62hs-secret"
PRINTENV = """
name: printenv
steps:
  - id: dump
    uses: shell
    with: {command: [printenv]}
  - id: passed
    uses: shell
    with: {shell: true, command: 'echo "passed=$MINE"', env: {MINE: "{{ secret('passed') }}"}}
"""


@pytest.fixture
def pg_store(home: Home) -> Any:
    """A fresh PostgreSQL database; its URL carries a password (trust auth ignores it)."""
    require_service("PostgreSQL", 5432)
    name = f"ktlo_sec_{uuid.uuid4().hex[:10]}"
    admin = create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:5432/{name}", name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _leaks(texts: list[str]) -> list[str]:
    values = [*SECRET_VALUES.values(), DB_PASSWORD]
    return [f"{v} in {t[:200]!r}" for t in texts for v in values if v in t]


def test_printenv_step_sees_none_of_ktlos_secrets(
    home: Home, prefect_api: str, pg_store: Any
) -> None:
    url, database = pg_store
    env = {**home.env, **SECRET_VALUES, "KTLO_DATABASE_URL": url}
    path = home.runbook("printenv", PRINTENV)
    ran = cli("run", str(path), "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    steps = {s["id"]: s for s in result["steps"]}
    dump = steps["dump"]["output"]["stdout"]
    assert "PATH=" in dump  # the step did print its environment
    for name in [*SECRET_VALUES, "KTLO_DATABASE_URL"]:
        assert f"{name}=" not in dump, name
    assert steps["passed"]["output"]["stdout"] == "passed=***\n"  # passed on purpose, masked

    history = cli("history", result["run_id"], "--json", env=env)
    assert history.returncode == 0, history.stderr
    admin = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
    with admin.connect() as conn:
        audit = [
            json.dumps(list(r), default=str) for r in conn.execute(text("SELECT * FROM ktlo_audit"))
        ]
    admin.dispose()
    assert audit  # the run was audited
    logs = _flow_run_logs(result["run_id"])
    assert any("PATH=" in line for line in logs)  # the step's output was logged
    texts = [ran.stdout, ran.stderr, history.stdout, *audit, *logs]
    assert not _leaks(texts), _leaks(texts)


def _flow_run_logs(flow_run_id: str) -> list[str]:
    from tests.serve_helpers import api

    async def read(client: Any) -> list[str]:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]))
        )
        return [log.message for log in logs]

    return wait_until(lambda: api(read), 30, "the run's logs")


def test_hostile_alert_through_ktlo_serve(home: Home, prefect_api: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    target, fetched = start_receiver(), start_receiver()
    home.runbook(
        "hostile",
        TRIGGERED.format(name="hostile")
        + """
steps:
  - id: echo
    uses: shell
    needs: []
    with: {shell: true, command: "echo host={{ incident.labels.instance }}"}
  - id: words
    uses: shell
    needs: []
    with: {command: "printf [%s] {{ incident.labels.service }}"}
  - id: ssrf
    uses: http.request
    needs: []
    on_failure: continue
    with: {url: "{{ incident.annotations.target }}", allowed_hosts: [localhost]}
  - id: allowed
    uses: http.request
    needs: []
    with: {url: "{{ incident.annotations.allowed }}", allowed_hosts: [127.0.0.1]}
  - id: env
    uses: shell
    needs: []
    with: {command: [printenv]}
""",
    )
    port = free_port()
    served = Served(
        {
            **home.env,
            "KTLO_WEBHOOK_TOKEN": TOKEN,
            "KTLO_AUDIT_KEY": SECRET_VALUES["KTLO_AUDIT_KEY"],
            "KTLO_SECRET_NEVER_USED": SECRET_VALUES["KTLO_SECRET_NEVER_USED"],
        },
        "--port",
        str(port),
        webhook=True,
    )
    try:
        served.wait_for("serving ", timeout=90)

        def answering() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answering, 30, "the webhook receiver")
        label = f"$(id > {marker})"
        response = httpx.post(
            f"http://127.0.0.1:{port}/hooks/generic",
            json={
                "summary": "hostile",
                "dedup_key": "hostile-1",
                "event": "attack",
                "labels": {"event": "attack", "instance": label, "service": "a --no-block b"},
                "annotations": {
                    "target": f"{target.url}/latest/meta-data",
                    "allowed": f"{fetched.url}/ok",
                },
            },
            headers={"authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        from ktlo.store.runs import recent_runs, steps_of

        def finished() -> Any:
            runs = [r for r in recent_runs("hostile") if r.status != "running"]
            return runs[0] if runs else None

        run = wait_until(finished, 120, "the run of the hostile alert")
        steps = {s.step_id: s for s in steps_of(run.id)}
        assert run.status == "succeeded_with_errors", run.error
        assert not marker.exists()
        assert steps["echo"].output["stdout"] == f"host={label}\n"
        assert steps["words"].output["stdout"] == "[a --no-block b]"
        assert "host '127.0.0.1'" in steps["ssrf"].error
        assert "allowed_hosts" in steps["ssrf"].error
        assert target.requests == []
        assert steps["allowed"].status == "succeeded"
        assert len(fetched.requests) == 1
        dump = steps["env"].output["stdout"]
        assert "PATH=" in dump
        for name in ("KTLO_WEBHOOK_TOKEN", "KTLO_AUDIT_KEY", "KTLO_SECRET_NEVER_USED"):
            assert f"{name}=" not in dump, name
        with sqlite3.connect(home.path / "ktlo.db") as db:
            audit = [
                json.dumps(list(r), default=str) for r in db.execute("SELECT * FROM ktlo_audit")
            ]
        texts = [dump, *audit, served.output, *_flow_run_logs(run.id)]
        secrets = [TOKEN, SECRET_VALUES["KTLO_AUDIT_KEY"], SECRET_VALUES["KTLO_SECRET_NEVER_USED"]]
        assert not [s for s in secrets for t in texts if s in t]
    finally:
        served.stop()
        target.close()
        fetched.close()
