"""Secret values never reach logs, artifacts, the store, the audit trail or error messages."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import Home
from tests.helpers import Receiver, cli

TOKEN = "tok-4f9a-very-secret-value"


def _prefect_texts(flow_run_id: Any) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)

    async def read() -> list[str]:
        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
            task_runs = await client.read_task_runs(
                task_run_filter=TaskRunFilter(
                    flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])
                )
            )
            flow_run = await client.read_flow_run(flow_run_id)
            texts = [log.message for log in logs]
            texts += [str(a.data) for a in artifacts]
            texts += [str(t.state.message if t.state else "") for t in task_runs]
            texts += [
                str(flow_run.state.message if flow_run.state else ""),
                json.dumps(flow_run.parameters),
            ]
            return texts

    return asyncio.run(read())


def test_secret_is_used_but_never_shown(
    home: Home, run: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KTLO_SECRET_API_TOKEN", TOKEN)
    path = home.runbook(
        "leaky",
        f"""
        name: leaky
        notify:
          on_failure: ["json://127.0.0.1:{receiver.port}/alerts"]
        steps:
          - id: call-api
            uses: http.request
            with:
              url: "{receiver.url}/api"
              headers: {{Authorization: "Bearer {{{{ secret('api-token') }}}}"}}
          - id: echo
            uses: shell
            with: {{command: [sh, -c, "echo token={{{{ secret('api-token') }}}}; echo err {{{{ secret('api-token') }}}} >&2"]}}
          - id: say
            uses: log
            with: {{message: "the token is {{{{ secret('api-token') }}}}"}}
          - id: fail
            uses: shell
            with: {{command: [sh, -c, "echo 'cannot authenticate with {{{{ secret('api-token') }}}}' >&2; exit 2"]}}
        """,
    )
    result = run(path)
    assert result.status == "failed"
    # the secret really was used
    assert receiver.requests[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert "***" in result.steps["echo"].output["stdout"]
    # ...and shows up nowhere
    from ktlo.store.audit import events

    seen: list[str] = []
    for step in result.steps.values():
        seen += [json.dumps(step.output), str(step.error), str(step.summary)]
    seen += [str(result.run.error), json.dumps(result.run.params)]
    seen += [json.dumps(e.details) + e.subject for e in events(limit=1000)]
    seen += [json.dumps(m) for m in receiver.json_urls()]
    seen += _prefect_texts(result.state.state_details.flow_run_id)
    assert any("***" in text for text in seen)
    leaks = [text for text in seen if TOKEN in text]
    assert not leaks, leaks
    history = cli("history", "--json", env=home.env)
    assert history.returncode == 0
    assert TOKEN not in history.stdout
    assert "cannot authenticate with ***" in history.stdout


def test_missing_secret_fails_the_step_with_a_hint(home: Home, run: Any) -> None:
    path = home.runbook(
        "nosecret",
        """
        name: nosecret
        steps:
          - id: needs-secret
            uses: log
            with: {message: "{{ secret('not-defined-anywhere') }}"}
        """,
    )
    result = run(path)
    error = result.steps["needs-secret"].error
    assert "secret 'not-defined-anywhere' not found" in error
    assert "KTLO_SECRET_NOT_DEFINED_ANYWHERE" in error
