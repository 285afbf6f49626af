"""The runbook flow: every runbook runs through this one flow (and every deployment uses it).

The flow receives the runbook's name (or path) and the runbook's own parameters as keyword
arguments, so a deployment's parameter schema can be the runbook's typed parameters. It
validates everything before the first step, runs the steps with `ktlo.engine.executor.Executor`,
publishes a markdown summary artifact and sends the runbook's notifications.
"""

from __future__ import annotations

import asyncio
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import MarkdownArtifact
from prefect.context import FlowRunContext
from prefect.utilities.annotations import quote
from pydantic import Field

from ktlo import notify, secrets
from ktlo.engine.executor import Executor, Outcome, RunInfo, quiet_expected_failures
from ktlo.engine.summary import markdown_summary, notification
from ktlo.errors import KtloError, RunbookInvalid, StepFailed
from ktlo.orchestration import liveness
from ktlo.runbook.loader import find_runbook, load_runbook
from ktlo.runbook.model import Runbook
from ktlo.runbook.params import validate_params
from ktlo.status import RunStatus
from ktlo.steps.context import flow_client, get_step_context
from ktlo.steps.registry import StepInput, StepOutput, step_task
from ktlo.store import runs

FLOW_NAME = "runbook"
MAX_DEPTH = 8
nesting: ContextVar[int] = ContextVar("ktlo_runbook_nesting", default=0)


class RunbookFailed(KtloError):
    """The run failed; the message says which step and why (already redacted, logged as one line)."""


def _short_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1].removesuffix(".yaml").removesuffix(".yml")


async def _name_run(ref: str) -> None:
    """Name the run after its runbook and slot (`nightly-backup-20261128-020000`)."""
    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx else None
    if flow_run is not None:
        slot = flow_run.expected_start_time or flow_run.start_time or datetime.now(UTC)
        await name_flow_run(f"{_short_name(ref)}-{slot:%Y%m%d-%H%M%S}")


async def name_flow_run(name: str) -> None:
    """Name the current flow run; meant to run beside the flow's work (`create_task`).

    Prefect's `flow_run_name` renames before the flow starts, through a fresh client and a
    second lookup of the result storage: a tenth of a second on every run.
    """
    ctx = FlowRunContext.get()
    flow_run = ctx.flow_run if ctx else None
    client = flow_client()
    if flow_run is None or client is None:
        return
    try:
        await client.set_flow_run_name(flow_run_id=flow_run.id, name=name)
    except Exception as exc:  # a name is a convenience; it never fails a run
        get_run_logger().debug("could not name the flow run: %s", exc)


def _flow_run_url(flow_run_id: str) -> str | None:
    from prefect.utilities.urls import url_for

    try:
        return url_for("flow-run", obj_id=flow_run_id)
    except Exception:
        return None


def _trigger(ctx: FlowRunContext | None, incident: dict[str, Any] | None) -> tuple[str, str | None]:
    parent = get_step_context()
    if parent is not None:
        return "subflow", parent.run_id
    if incident is not None:
        return "incident", None
    flow_run = ctx.flow_run if ctx else None
    if flow_run is not None and flow_run.deployment_id is not None:
        return ("schedule" if flow_run.auto_scheduled else "deployment"), None
    return "manual", None


def _artifact_key(name: str) -> str:
    return "runbook-" + re.sub(r"[^a-z0-9-]", "-", name.lower())


def _mark_ended(status: str) -> Any:
    """A flow hook closing ktlo's record of a run that crashed or was cancelled.

    For served runs Prefect runs these hooks in the serving process, so they fire even when
    the run's own process was killed.
    """

    async def hook(flow: Any, flow_run: Any, state: Any) -> None:
        from ktlo.orchestration.crashes import close_run

        record = runs.get_run(str(flow_run.id))
        if record is not None and record.status == RunStatus.RUNNING:
            error = f"{state.name}: {state.message}" if state.message else str(state.name)
            await close_run(record, flow_run, status, error)

    hook.__name__ = f"ktlo_mark_{status}"
    return hook


# Summary artifacts being published, by flow run id (see `_publish_beside_final_state`).
_publishing: dict[str, asyncio.Task[None]] = {}


async def ktlo_await_summary(flow: Any, flow_run: Any, state: Any) -> None:
    """A completion/failure hook: the run's summary artifact is there before the call returns."""
    task = _publishing.pop(str(flow_run.id), None)
    if task is not None:
        await task


END_HOOKS: dict[str, Any] = {
    "on_completion": [ktlo_await_summary],
    "on_failure": [ktlo_await_summary],
    "on_crashed": [_mark_ended(RunStatus.CRASHED)],
    "on_cancellation": [_mark_ended(RunStatus.CANCELLED)],
}


@flow(name=FLOW_NAME, validate_parameters=False, **END_HOOKS)
async def runbook_flow(
    runbook: str, incident: dict[str, Any] | None = None, **params: Any
) -> quote:
    """Run one ktlo runbook; `runbook` is its name in the runbooks directory or a file path."""
    return await execute_runbook(runbook, params, incident)


async def execute_runbook(
    runbook: str, params: dict[str, Any], incident: dict[str, Any] | None = None
) -> quote:
    """The body of every runbook flow run (call it inside a flow).

    The result (run id, status, every step's output) is wrapped in Prefect's `quote`, or
    Prefect walks all of it looking for futures when the flow returns: a quarter of a
    second for a sweep of 1,000 checks. `run_result()` unwraps it.
    """
    secrets.install_log_redaction()
    quiet_expected_failures()
    ctx = FlowRunContext.get()
    flow_run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else "local"
    url = _flow_run_url(flow_run_id)
    naming = asyncio.create_task(_name_run(runbook))
    try:
        return await _execute(runbook, params, incident, ctx, flow_run_id, url)
    finally:
        await naming


async def _execute(
    runbook: str,
    params: dict[str, Any],
    incident: dict[str, Any] | None,
    ctx: FlowRunContext | None,
    flow_run_id: str,
    url: str | None,
) -> quote:
    logger = get_run_logger()
    trigger, parent_run_id = _trigger(ctx, incident)
    try:
        rb = load_runbook(find_runbook(runbook))
        values = validate_params(rb, params)
    except RunbookInvalid as exc:
        _record_rejected(flow_run_id, runbook, params, trigger, parent_run_id, url, str(exc))
        logger.error("Runbook is invalid; no step was run:\n%s", exc)
        raise RunbookFailed(f"runbook is invalid; no step was run: {exc}") from None
    except KtloError as exc:
        _record_rejected(flow_run_id, runbook, params, trigger, parent_run_id, url, str(exc))
        logger.error("%s; no step was run", exc)
        raise RunbookFailed(f"{exc}; no step was run") from None

    info = RunInfo(
        run_id=flow_run_id, runbook=rb.name, flow_run_id=flow_run_id, url=url, trigger=trigger
    )
    runs.start_run(
        flow_run_id, rb.name, params=values, trigger=trigger, parent_run_id=parent_run_id, url=url
    )
    logger.info("Running runbook %s (%d steps, trigger: %s)", rb.name, len(rb.steps), trigger)
    with liveness.alive(flow_run_id):  # `ktlo history` sees at once if this process dies
        try:
            outcome = await Executor(rb, values, info, incident=incident).run()
        except BaseException as exc:
            runs.finish_run(
                flow_run_id,
                RunStatus.CRASHED,
                error=secrets.redact(f"{type(exc).__name__}: {exc}"),
            )
            raise
        runs.finish_run(flow_run_id, outcome.status, error=outcome.error)
    _publish_beside_final_state(rb, info, outcome)
    _notify(rb, info, outcome)
    if outcome.status == RunStatus.FAILED:
        raise RunbookFailed(outcome.error or "runbook failed")
    if outcome.status == RunStatus.SUCCEEDED_WITH_ERRORS:
        names = ", ".join(s.step_id for s in outcome.failed_steps)
        logger.warning(
            "Runbook %s finished with failed steps marked on_failure: continue: %s", rb.name, names
        )
    return quote(
        {
            "run_id": flow_run_id,
            "status": outcome.status,
            "outputs": secrets.redact(outcome.outputs),
        }
    )


def run_result(value: Any) -> dict[str, Any]:
    """The result of a runbook flow run (`state.result()`), unwrapped."""
    return dict(value.unquote() if isinstance(value, quote) else value)


def _record_rejected(
    run_id: str,
    ref: str,
    params: dict[str, Any],
    trigger: str,
    parent: str | None,
    url: str | None,
    error: str,
) -> None:
    runs.start_run(
        run_id, _short_name(ref), params=params, trigger=trigger, parent_run_id=parent, url=url
    )
    runs.finish_run(run_id, RunStatus.FAILED, error=error)


def _publish_beside_final_state(rb: Runbook, info: RunInfo, outcome: Outcome) -> None:
    """Publish the summary while Prefect records the run's final state.

    Both calls wait on the server, which is busiest just then (it is still recording the
    run's task runs); one after the other they paid that queue twice, about a tenth of a
    second per run. The flow's completion and failure hooks wait for the publication.
    """
    _publishing[info.run_id] = asyncio.create_task(_publish(rb, info, outcome))


async def _publish(rb: Runbook, info: RunInfo, outcome: Outcome) -> None:
    try:
        await MarkdownArtifact(
            markdown=secrets.redact(markdown_summary(rb, info, outcome)),
            key=_artifact_key(rb.name),
            description=f"ktlo runbook {rb.name}: {outcome.status}",
        ).acreate(client=flow_client())
    except Exception as exc:  # a summary must never fail a run that did its work
        get_run_logger().warning("could not publish the summary artifact: %s", exc)


def _notify(rb: Runbook, info: RunInfo, outcome: Outcome) -> None:
    targets = (
        rb.notify.on_failure if outcome.status != RunStatus.SUCCEEDED else rb.notify.on_success
    )
    if outcome.status == RunStatus.SUCCEEDED_WITH_ERRORS:
        targets = list(dict.fromkeys([*rb.notify.on_failure, *rb.notify.on_success]))
    if not targets:
        return
    title, body = notification(rb, info, outcome)
    logger = get_run_logger()
    try:
        delivery = notify.send(targets, title, body)
    except KtloError as exc:
        logger.error("notification failed: %s", exc)
        return
    if delivery.failed:
        logger.error("notification not delivered to: %s", ", ".join(delivery.failed))


# --- the `runbook` step type: run another runbook as a subflow ----------------------------


class RunbookStepInput(StepInput):
    name: str = Field(description="the runbook to run (name in the runbooks directory)")
    params: dict[str, Any] = Field(default_factory=dict)


class RunbookStepOutput(StepOutput):
    run_id: str
    status: str
    outputs: dict[str, Any]


def _validate_child(
    data: dict[str, Any], parent: Runbook
) -> list[tuple[tuple[str | int, ...], str]]:
    name = data.get("name")
    if not isinstance(name, str) or "{{" in name:
        return []
    if name == parent.name:
        return [(("name",), f"runbook '{name}' cannot run itself")]
    try:
        child = load_runbook(
            find_runbook(name, parent.path.parent if parent.path else None), check=False
        )
    except KtloError as exc:
        return [(("name",), str(exc).splitlines()[0])]
    raw = data.get("params") or {}
    if isinstance(raw, dict):
        static = {k: v for k, v in raw.items() if not (isinstance(v, str) and "{{" in v)}
        unknown = [k for k in static if k not in child.parameters]
        if unknown:
            return [(("params", unknown[0]), f"runbook '{name}' has no parameter '{unknown[0]}'")]
    return []


def _summarize_child(out: RunbookStepOutput) -> str:
    return f"runbook run {out.run_id[:8]}: {out.status}"


@step_task(
    "runbook",
    RunbookStepInput,
    RunbookStepOutput,
    summarize=_summarize_child,
    validate=_validate_child,
)
async def run_child_runbook(inputs: RunbookStepInput) -> RunbookStepOutput:
    """Run another runbook as a subflow and fail if it fails."""
    if nesting.get() >= MAX_DEPTH:
        raise StepFailed(f"runbooks nested deeper than {MAX_DEPTH} levels")
    token = nesting.set(nesting.get() + 1)
    try:
        state = await runbook_flow(runbook=inputs.name, **inputs.params, return_state=True)
    finally:
        nesting.reset(token)
    if state.is_completed():
        result = run_result(await state.aresult())
        return RunbookStepOutput(
            run_id=result["run_id"], status=result["status"], outputs=result["outputs"]
        )
    message = state.message or "failed"
    raise StepFailed(f"runbook '{inputs.name}' {message}")
