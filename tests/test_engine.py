"""The runbook flow on a real Prefect server: DAG, outputs, retries, timeouts, failure policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Home
from tests.helpers import Receiver


def test_outputs_flow_through_templates(home: Home, run: Any) -> None:
    path = home.runbook(
        "chain",
        """
        name: chain
        parameters:
          word: {type: string, default: lights}
        steps:
          - id: produce
            uses: shell
            with: {command: [echo, "keep the {{ params.word }} on"]}
          - id: consume
            uses: log
            with: {message: "got: {{ steps.produce.output.stdout | trim }} ({{ steps.produce.output.exit_code }})"}
        """,
    )
    result = run(path, word="LIGHTS")
    assert result.status == "succeeded"
    assert result.steps["consume"].output == {"message": "got: keep the LIGHTS on (0)"}
    assert result.run.params == {"word": "LIGHTS"}


def test_independent_steps_run_concurrently(home: Home, run: Any, tmp_path: Path) -> None:
    # Each step waits for the other's flag: only concurrent execution lets both finish.
    wait = (
        'touch "$MINE"; for i in $(seq 100); do [ -e "$THEIRS" ] && exit 0; sleep 0.1; done; exit 1'
    )
    path = home.runbook(
        "parallel",
        f"""
        name: parallel
        steps:
          - id: left
            uses: shell
            needs: []
            with: {{shell: true, command: '{wait}', env: {{MINE: "{tmp_path}/l", THEIRS: "{tmp_path}/r"}}}}
          - id: right
            uses: shell
            needs: []
            with: {{shell: true, command: '{wait}', env: {{MINE: "{tmp_path}/r", THEIRS: "{tmp_path}/l"}}}}
          - id: join
            uses: log
            needs: [left, right]
            with: {{message: joined}}
        """,
    )
    result = run(path)
    assert result.status == "succeeded", result.steps
    assert [s.status for s in result.steps.values()] == ["succeeded"] * 3


def test_retries_until_success(home: Home, run: Any, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    path = home.runbook(
        "flaky",
        f"""
        name: flaky
        steps:
          - id: flaky
            uses: shell
            retries: 2
            with:
              shell: true
              command: 'n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; [ $n -ge 3 ]'
        """,
    )
    result = run(path)
    assert result.status == "succeeded"
    assert result.steps["flaky"].attempts == 3
    assert counter.read_text().strip() == "3"


def test_retries_exhausted_fail_the_run(home: Home, run: Any) -> None:
    path = home.runbook(
        "always-fails",
        """
        name: always-fails
        steps:
          - id: bad
            uses: shell
            retries: 1
            with: {command: "sh -c 'echo boom >&2; exit 3'"}
          - id: after
            uses: log
            with: {message: never}
        """,
    )
    result = run(path)
    assert result.status == "failed"
    assert result.state.is_failed()
    assert result.steps["bad"].attempts == 2
    assert "exit code 3 (expected 0): boom" in result.steps["bad"].error
    assert result.steps["after"].status == "not_run"


def test_timeout_stops_the_step_and_its_process(home: Home, run: Any, tmp_path: Path) -> None:
    marker = tmp_path / "finished"
    path = home.runbook(
        "slow",
        f"""
        name: slow
        steps:
          - id: slow
            uses: shell
            timeout_s: 1
            with: {{shell: true, command: 'sleep 5; touch {marker}'}}
        """,
    )
    result = run(path)
    assert result.status == "failed"
    assert "timed out after 1s" in result.steps["slow"].error
    import time

    time.sleep(5)
    assert not marker.exists(), "the timed-out command kept running"


def test_on_failure_continue_lets_dependants_run(home: Home, run: Any) -> None:
    path = home.runbook(
        "tolerant",
        """
        name: tolerant
        steps:
          - id: optional
            uses: shell
            on_failure: continue
            with: {command: "false"}
          - id: next
            uses: log
            with: {message: "previous was {{ steps.optional.status }}"}
        """,
    )
    result = run(path)
    assert result.status == "succeeded_with_errors"
    assert result.state.is_completed()
    assert result.steps["optional"].status == "failed"
    assert result.steps["optional"].continued
    assert result.steps["next"].output == {"message": "previous was failed"}


def test_abort_stops_dependants_but_not_running_siblings(home: Home, run: Any) -> None:
    path = home.runbook(
        "abort",
        """
        name: abort
        steps:
          - id: breaks
            uses: shell
            needs: []
            with: {command: "false"}
          - id: sibling
            uses: shell
            needs: []
            with: {command: "sleep 1"}
          - id: dependant
            uses: log
            needs: [breaks]
            with: {message: never}
        """,
    )
    result = run(path)
    assert result.status == "failed"
    assert result.steps["sibling"].status == "succeeded"
    assert result.steps["dependant"].status == "not_run"
    assert result.steps["dependant"].error == "not run: step 'breaks' failed"


def test_if_false_skips_but_does_not_block(home: Home, run: Any) -> None:
    path = home.runbook(
        "conditional",
        """
        name: conditional
        parameters:
          risky: {type: boolean, default: false}
        steps:
          - id: gate
            uses: log
            if: "{{ params.risky }}"
            with: {message: risky}
          - id: always
            uses: log
            with: {message: done}
        """,
    )
    result = run(path)
    assert result.steps["gate"].status == "skipped"
    assert result.steps["always"].status == "succeeded"
    result = run(path, risky=True)
    assert result.steps["gate"].status == "succeeded"


def test_invalid_runbook_starts_no_step(home: Home, run: Any, tmp_path: Path) -> None:
    marker = tmp_path / "created"
    path = home.runbook(
        "broken",
        f"""
        name: broken
        steps:
          - id: would-create
            uses: shell
            with: {{command: [touch, "{marker}"]}}
          - id: bad
            uses: log
            with: {{message: "{{{{ params.undeclared }}}}"}}
        """,
    )
    result = run(path)
    assert result.state.is_failed()
    assert "no step was run" in result.state.message
    assert "template uses unknown parameter 'undeclared'" in result.state.message
    assert result.status == "failed"
    assert result.steps == {}
    assert not marker.exists()


def test_bad_parameters_start_no_step(home: Home, run: Any, tmp_path: Path) -> None:
    marker = tmp_path / "created"
    path = home.runbook(
        "typed",
        f"""
        name: typed
        parameters:
          count: {{type: integer, minimum: 1}}
        steps:
          - id: would-create
            uses: shell
            with: {{command: [touch, "{marker}"]}}
        """,
    )
    result = run(path, count="many")
    assert result.state.is_failed()
    assert "parameter 'count'" in result.state.message
    assert not marker.exists()
    result = run(path)
    assert "parameter 'count' is required" in result.state.message
    assert not marker.exists()


def test_runtime_input_errors_fail_the_step_clearly(home: Home, run: Any) -> None:
    path = home.runbook(
        "runtime",
        """
        name: runtime
        steps:
          - id: out
            uses: shell
            with: {command: [echo, "not-a-number"]}
          - id: use
            uses: http.request
            with: {url: "http://127.0.0.1:9/", timeout_s: "{{ steps.out.output.stdout | trim }}"}
        """,
    )
    result = run(path)
    assert result.steps["use"].status == "failed"
    assert "with.timeout_s" in result.steps["use"].error


def test_http_request_step(home: Home, run: Any, receiver: Receiver) -> None:
    path = home.runbook(
        "http",
        f"""
        name: http
        steps:
          - id: post
            uses: http.request
            with:
              method: post
              url: "{receiver.url}/api/things"
              headers: {{X-Test: "yes"}}
              json: {{name: thing}}
          - id: check
            uses: log
            with: {{message: "{{{{ steps.post.output.status }}}} {{{{ steps.post.output.json.ok }}}}"}}
          - id: wrong-status
            uses: http.request
            with: {{url: "{receiver.url}/", expect_status: [201]}}
          - id: recorded-not-failed
            uses: http.request
            needs: []
            with: {{url: "http://127.0.0.1:9/", fail: false, timeout_s: 2}}
        """,
    )
    result = run(path)
    recorded = result.steps["recorded-not-failed"]
    assert recorded.status == "succeeded"
    assert recorded.output["status"] == 0
    assert "ConnectError" in recorded.output["error"]
    assert result.steps["check"].output == {"message": "200 True"}
    assert receiver.requests[0]["json"] == {"name": "thing"}
    assert receiver.requests[0]["headers"]["X-Test"] == "yes"
    assert "HTTP 200 (expected 201)" in result.steps["wrong-status"].error


def test_subflow_runbook_step(home: Home, run: Any) -> None:
    home.runbook(
        "child",
        """
        name: child
        parameters:
          who: {type: string}
        steps:
          - id: hello
            uses: log
            with: {message: "hello {{ params.who }}"}
        """,
    )
    path = home.runbook(
        "parent",
        """
        name: parent
        steps:
          - id: call
            uses: runbook
            with: {name: child, params: {who: operator}}
          - id: echo
            uses: log
            with: {message: "{{ steps.call.output.outputs.hello.message }}"}
        """,
    )
    result = run(path)
    assert result.status == "succeeded", result.steps
    assert result.steps["echo"].output == {"message": "hello operator"}
    from ktlo.store.runs import recent_runs

    child = recent_runs("child", limit=1)[0]
    assert child.trigger == "subflow"
    assert child.parent_run_id == result.run.id


def test_failure_notification_reaches_a_real_apprise_target(
    home: Home, run: Any, receiver: Receiver
) -> None:
    path = home.runbook(
        "notifies",
        f"""
        name: notifies
        notify:
          on_failure: ["json://127.0.0.1:{receiver.port}/alerts"]
        steps:
          - id: broken
            uses: shell
            with: {{command: "sh -c 'echo disk full >&2; exit 1'"}}
        """,
    )
    result = run(path)
    assert result.status == "failed"
    messages = receiver.json_urls()
    assert len(messages) == 1
    assert "notifies FAILED at step 'broken'" in messages[0]["title"]
    assert "disk full" in messages[0]["message"]
    assert result.run.id in messages[0]["message"]


def test_notify_step_with_a_named_channel(
    home: Home, run: Any, receiver: Receiver, monkeypatch: Any
) -> None:
    monkeypatch.setenv("KTLO_CHANNELS", f"oncall=json://127.0.0.1:{receiver.port}/oncall")
    from ktlo.settings import reload_settings

    reload_settings()
    path = home.runbook(
        "tell",
        """
        name: tell
        steps:
          - id: tell
            uses: notify
            with: {to: [oncall], title: "maintenance", body: "starting"}
        """,
    )
    result = run(path)
    assert result.status == "succeeded"
    assert result.steps["tell"].output == {"sent": ["oncall"], "failed": []}
    assert receiver.json_urls()[0]["title"] == "maintenance"


def _artifacts_and_name(flow_run_id: Any) -> tuple[list[Any], str]:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read() -> tuple[list[Any], str]:
        async with get_client() as client:
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
            return artifacts, (await client.read_flow_run(flow_run_id)).name

    return asyncio.run(read())


def test_summary_artifact_and_run_name(home: Home, run: Any) -> None:
    import re

    path = home.runbook(
        "summarised",
        """
        name: summarised
        steps:
          - id: one
            uses: log
            with: {message: first}
          - id: two
            uses: shell
            on_failure: continue
            with: {command: "false"}
        """,
    )
    result = run(path)
    artifacts, name = _artifacts_and_name(result.state.state_details.flow_run_id)
    assert re.fullmatch(r"summarised-\d{8}-\d{6}", name), name
    assert len(artifacts) == 1
    body = artifacts[0].data
    assert artifacts[0].key == "runbook-summarised"
    assert "`one`" in body
    assert "`two`" in body
    assert "failed (continued)" in body


def test_a_failed_run_has_its_summary_too(home: Home, run: Any) -> None:
    path = home.runbook(
        "failing",
        """
        name: failing
        steps:
          - id: broken
            uses: shell
            with: {command: "false"}
        """,
    )
    result = run(path)
    assert result.status == "failed"
    artifacts, _ = _artifacts_and_name(result.state.state_details.flow_run_id)
    summary = [a for a in artifacts if a.key == "runbook-failing"]
    assert len(summary) == 1, [a.key for a in artifacts]
    assert "`broken`" in summary[0].data


def test_task_runs_are_named_after_their_steps(home: Home, run: Any) -> None:
    """Steps of one type share one configured Prefect task; each run still bears its step's id."""
    import asyncio
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    path = home.runbook(
        "named",
        """
        name: named
        steps:
          - {id: first, uses: log, with: {message: one}}
          - {id: second, uses: log, with: {message: two}}
          - {id: third, uses: log, retries: 1, with: {message: three}}
        """,
    )
    result = run(path)
    assert result.status == "succeeded"

    async def names() -> list[str]:
        async with get_client() as client:
            flow_runs = FlowRunFilter(
                id=FlowRunFilterId(any_=[result.state.state_details.flow_run_id])
            )
            return sorted(t.name for t in await client.read_task_runs(flow_run_filter=flow_runs))

    deadline = time.monotonic() + 30  # the server records task runs from events, shortly after
    while (found := asyncio.run(names())) != ["first", "second", "third"]:
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
