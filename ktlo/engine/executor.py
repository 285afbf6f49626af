"""The runbook executor: runs validated steps as Prefect task runs along their DAG.

Independent steps run concurrently (asyncio tasks in the flow's event loop); a step starts
when everything it needs has finished. A failed step with `on_failure: abort` stops new steps
from starting (running ones finish); with `continue` its dependants still run and the run is
marked as succeeded with errors. Each step's result is stored and audited as it finishes, by
a writer thread, so the next step does not wait for the store; the run ends only after every
record is written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any

from prefect.utilities.annotations import quote
from pydantic import ValidationError

from ktlo import secrets
from ktlo.errors import KtloError, StepFailed
from ktlo.runbook.model import Runbook, Step
from ktlo.runbook.rendering import render_inputs
from ktlo.runbook.templating import evaluate, expression_source
from ktlo.status import RunStatus, StepStatus
from ktlo.steps import registry
from ktlo.steps.context import StepContext, current_step
from ktlo.store import runs
from ktlo.store.models import StepRun, utcnow


def template_env() -> dict[str, str]:
    """`env.<NAME>` in templates: the process environment minus ktlo's own secrets."""
    return {k: v for k, v in secrets.child_environment().items() if k != secrets.STORE_URL_ENV}


EXPECTED_FAILURES: tuple[type[BaseException], ...] = (KtloError, TimeoutError)
_quiet_installed = False


def quiet_expected_failures() -> None:
    """Log timeouts and step failures as one line: Prefect attaches a 60-line stack to them.

    Their message says everything (the step, the reason); the stack only shows Prefect's
    own frames. Other exceptions (bugs) keep theirs; with `KTLO_DEBUG=1` every one does.
    """
    global _quiet_installed
    if _quiet_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        info = record.exc_info
        if (
            info
            and isinstance(info[1], EXPECTED_FAILURES)
            and record.name.startswith("prefect.")
            and not os.environ.get("KTLO_DEBUG")
        ):
            record.exc_info, record.exc_text = None, None
        return record

    logging.setLogRecordFactory(factory)
    _quiet_installed = True


@dataclass
class RunInfo:
    run_id: str
    runbook: str
    flow_run_id: str | None
    url: str | None
    trigger: str


@dataclass
class Outcome:
    """The result of a whole run, as the flow reports it."""

    status: RunStatus
    steps: list[StepRun] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_steps(self) -> list[StepRun]:
        return [s for s in self.steps if s.status == StepStatus.FAILED]

    @property
    def error(self) -> str | None:
        fatal = [s for s in self.failed_steps if not s.continued]
        if not fatal:
            return None
        first = fatal[0]
        return f"step '{first.step_id}' failed: {first.error}"


def _step_run_name() -> str:
    """A step's task run is named after the step (`current_step` is set around the call)."""
    step = current_step.get()
    return step.step_id if step is not None else "step"


@lru_cache(maxsize=256)
def _configured_task(task: Any, retries: int, delay: float, timeout: float | None) -> Any:
    """A step type's task with a step's policies, built once per combination: building a Task
    reads its function's source, a millisecond or two that a per-step copy paid every step."""
    return task.with_options(
        task_run_name=_step_run_name,
        retries=retries,
        retry_delay_seconds=delay,
        timeout_seconds=timeout,
    )


def _input_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"with.{loc}: {err['msg']}" if loc else err["msg"])
    return "invalid inputs after rendering: " + "; ".join(parts)


class Executor:
    def __init__(
        self,
        runbook: Runbook,
        params: dict[str, Any],
        info: RunInfo,
        incident: dict[str, Any] | None = None,
    ):
        self.rb = runbook
        self.params = params
        self.info = info
        self.incident = incident
        self.deps = runbook.dependencies()
        self.positions = {s.id: i for i, s in enumerate(runbook.steps)}
        self.outputs: dict[str, Any] = {}
        self.results: dict[str, StepRun] = {}
        self._env = template_env()
        self._records = runs.StepRecorder()

    def context(self) -> dict[str, Any]:
        ctx: dict[str, Any] = {
            "params": self.params,
            "steps": {
                sid: {"output": self.outputs.get(sid), "status": r.status, "error": r.error}
                for sid, r in self.results.items()
            },
            "env": self._env,
            "secret": secrets.resolve,
            "run": {
                "id": self.info.run_id,
                "runbook": self.info.runbook,
                "url": self.info.url,
                "flow_run_id": self.info.flow_run_id,
            },
        }
        if self.incident is not None:
            ctx["incident"] = self.incident
        return ctx

    async def run(self) -> Outcome:
        try:
            return await self._run()
        finally:
            await self._records.drain()

    async def _run(self) -> Outcome:
        pending = [s for s in self.rb.steps]
        running: dict[asyncio.Task[StepRun], Step] = {}
        aborted_by: str | None = None
        while pending or running:
            ready = (
                []
                if aborted_by
                else [s for s in pending if all(d in self.results for d in self.deps[s.id])]
            )
            for step in ready:
                pending.remove(step)
            if len(ready) == 1 and not running:
                # A chain: await the step inline, as a hand-written flow would.
                finished_steps = [(ready[0], await self._execute(ready[0]))]
            else:
                for step in ready:
                    running[asyncio.create_task(self._execute(step), name=step.id)] = step
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                finished_steps = [(running.pop(task), task.result()) for task in done]
            for step, result in finished_steps:
                self.results[step.id] = result
                if (
                    result.status == StepStatus.FAILED
                    and not result.continued
                    and aborted_by is None
                ):
                    aborted_by = step.id
        for step in pending:
            reason = f"not run: step '{aborted_by}' failed" if aborted_by else "not run"
            self.results[step.id] = self._record(step, StepStatus.NOT_RUN, error=reason)
        ordered = [self.results[s.id] for s in self.rb.steps]
        if any(r.status == StepStatus.FAILED and not r.continued for r in ordered):
            status = RunStatus.FAILED
        elif any(r.status == StepStatus.FAILED for r in ordered):
            status = RunStatus.SUCCEEDED_WITH_ERRORS
        else:
            status = RunStatus.SUCCEEDED
        return Outcome(status=status, steps=ordered, outputs=dict(self.outputs))

    def _record(
        self,
        step: Step,
        status: StepStatus,
        *,
        started: float | None = None,
        attempts: int = 0,
        summary: str | None = None,
        output: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> StepRun:
        now = utcnow()
        duration = round((time.perf_counter() - started) * 1000, 1) if started is not None else None
        record = StepRun(
            run_id=self.info.run_id,
            step_id=step.id,
            position=self.positions[step.id],
            uses=step.uses,
            status=status,
            continued=status == StepStatus.FAILED and step.on_failure == "continue",
            attempts=attempts,
            started_at=now - timedelta(milliseconds=duration or 0),
            finished_at=now,
            duration_ms=duration,
            summary=secrets.redact(summary),
            output=secrets.redact(output),
            error=secrets.redact(error),
        )
        self._records.add(record)
        return record

    async def _execute(self, step: Step) -> StepRun:
        step_type = registry.get(step.uses)
        if step_type is None:  # validation makes this unreachable; keep the message clear anyway
            return self._record(step, StepStatus.FAILED, error=f"unknown step type '{step.uses}'")
        ctx = self.context()
        started = time.perf_counter()
        if step.if_ is not None:
            try:
                condition = evaluate(expression_source(step.if_), ctx)
            except KtloError as exc:
                return self._record(step, StepStatus.FAILED, started=started, error=f"if: {exc}")
            if not condition:
                return self._record(
                    step, StepStatus.SKIPPED, started=started, summary="condition was false"
                )
        try:
            rendered = render_inputs(step.with_, registry.renderings(step_type, step.with_), ctx)
            inputs = step_type.input_model.model_validate(rendered)
        except KtloError as exc:
            return self._record(
                step, StepStatus.FAILED, started=started, error=secrets.redact(str(exc))
            )
        except ValidationError as exc:
            return self._record(
                step, StepStatus.FAILED, started=started, error=secrets.redact(_input_error(exc))
            )
        task = _configured_task(step_type.task, step.retries, step.retry_delay_s, step.timeout_s)
        sctx = StepContext(
            run_id=self.info.run_id,
            runbook=self.rb.name,
            step_id=step.id,
            flow_run_id=self.info.flow_run_id,
            url=self.info.url,
        )
        token = current_step.set(sctx)
        try:
            # quote(): Prefect would otherwise walk the inputs (a sweep's 1,000 checks)
            # looking for futures; step inputs never hold any.
            output = await task(quote(inputs))
        except TimeoutError:
            return self._record(
                step,
                StepStatus.FAILED,
                started=started,
                attempts=sctx.attempts,
                error=f"timed out after {step.timeout_s:g}s",
            )
        except StepFailed as exc:
            return self._record(
                step, StepStatus.FAILED, started=started, attempts=sctx.attempts, error=str(exc)
            )
        except Exception as exc:
            detail = secrets.redact(f"{type(exc).__name__}: {exc}")
            return self._record(
                step, StepStatus.FAILED, started=started, attempts=sctx.attempts, error=detail
            )
        finally:
            current_step.reset(token)
        data = (
            output.model_dump(mode="json", by_alias=True)
            if hasattr(output, "model_dump")
            else output
        )
        self.outputs[step.id] = data
        summary = step_type.summarize(output) if step_type.summarize else None
        return self._record(
            step,
            StepStatus.SUCCEEDED,
            started=started,
            attempts=sctx.attempts,
            summary=summary,
            output=data if isinstance(data, dict) else {"value": data},
        )
