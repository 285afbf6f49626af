"""The backup domain's step types: `backup.<kind>` and `restore.<kind>` for every registered
kind (made here, the same way for each), `backup.verify`, `backup.freshness` and
`backup.prune`.

Only this module builds Prefect tasks, so the CLI can use the rest of the domain without
importing Prefect.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ktlo.steps.registry import step_task
from tasks.backup.jobs import in_thread, logger, run_ids
from tasks.backup.kinds import BackupKind, registered
from tasks.backup.model import BackupOutput, RestoreOutput, summarize_backup, summarize_restore
from tasks.backup.prune import PruneInput, PruneOutput, prune, summarize_prune
from tasks.backup.verify import (
    FreshnessInput,
    FreshnessOutput,
    VerifyInput,
    VerifyOutput,
    check_freshness,
    summarize_freshness,
    summarize_verify,
    verify_backup,
)

Step = Callable[[Any], Awaitable[Any]]


def _named(fn: Step, name: str, doc_of: Callable[..., Any]) -> Step:
    """Name the step function after its kind, with the kind method's docstring (whose first
    line becomes the step type's description)."""
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = inspect.getdoc(doc_of)
    return fn


def register_kind(kind: BackupKind[Any, Any, Any]) -> None:
    """Register `backup.<name>` and `restore.<name>`: each runs the kind in a worker thread."""

    async def backup(inputs: Any) -> BackupOutput:
        return kind.output(await in_thread(lambda job: kind.backup(inputs, job)))

    async def restore(inputs: Any) -> RestoreOutput:
        return await in_thread(lambda job: kind.restore(inputs, job))

    step_task(
        f"backup.{kind.name}", kind.backup_input, kind.backup_output, summarize=summarize_backup
    )(_named(backup, f"backup_{kind.name}_step", kind.backup))
    step_task(
        f"restore.{kind.name}", kind.restore_input, RestoreOutput, summarize=summarize_restore
    )(_named(restore, f"restore_{kind.name}_step", kind.restore_entry))


for _kind in registered():
    register_kind(_kind)


@step_task("backup.verify", VerifyInput, VerifyOutput, summarize=summarize_verify)
async def verify_step(inputs: VerifyInput) -> VerifyOutput:
    """Verify a backup: re-hash the stored object; `deep` also restores it and checks it."""
    return await in_thread(lambda job: verify_backup(inputs, job))


@step_task("backup.freshness", FreshnessInput, FreshnessOutput, summarize=summarize_freshness)
async def freshness_step(inputs: FreshnessInput) -> FreshnessOutput:
    """Fail when the newest verified backup of a source is older than max_age_s."""
    return check_freshness(inputs)


@step_task("backup.prune", PruneInput, PruneOutput, summarize=summarize_prune)
async def prune_step(inputs: PruneInput) -> PruneOutput:
    """Forget old backups with restic's keep-* rules; the newest verified one always stays."""
    run_id, _ = run_ids()
    log = logger()
    out = await asyncio.to_thread(prune, inputs, run_id=run_id)
    log.info(
        "%s: kept %s; %s %s",
        inputs.source,
        out.kept,
        "would remove" if out.dry_run else "removed",
        out.removed,
    )
    return out
