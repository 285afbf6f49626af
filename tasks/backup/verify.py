"""What `backup.verify` and `backup.freshness` do: is a backup still good, is it recent enough?

Verification re-reads the stored object and checks its size and sha256 against the catalog
(no key needed). `deep` also runs the deep check of the backup's kind (kinds/): it restores
into a scratch place and checks the result, e.g. a temporary directory for directories, a
scratch database (dropped afterwards) for PostgreSQL and MariaDB when `scratch_dsn` names a
server. The result is recorded on the catalog entry; retention and freshness trust only
verified backups.
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import Field

from ktlo import secrets
from ktlo.errors import StepFailed
from ktlo.steps.registry import StepInput, StepOutput
from ktlo.store import audit
from ktlo.store.models import utcnow
from tasks.backup import store
from tasks.backup.catalog import facts, resolve
from tasks.backup.kinds import Scratch, kind_of
from tasks.backup.model import BackupError, BackupRef
from tasks.backup.reader import stored
from tasks.backup.store import Backup
from tasks.backup.stream import Job


class VerifyInput(BackupRef):
    deep: bool = Field(default=False, description="also restore into a scratch place and check it")
    scratch_dsn: str | None = Field(
        default=None, description="deep, databases: server to create a scratch database on"
    )
    scratch_dir: str | None = Field(default=None, description="deep, files: where to extract")


class VerifyOutput(StepOutput):
    backup_id: str
    source: str
    kind: str
    deep: bool
    size: int
    sha256: str
    checks: dict[str, Any] = Field(default_factory=dict)
    duration_ms: float


def _deep(entry: Backup, job: Job, inputs: VerifyInput) -> dict[str, Any]:
    scratch = Scratch(dir=inputs.scratch_dir, dsn=inputs.scratch_dsn)
    return kind_of(entry).deep_check(entry, job, scratch)


def _rehash(entry: Backup, job: Job) -> dict[str, Any]:
    with stored(entry, job, decrypt=False) as handle:
        handle.finish()
    return {}


def _record(
    entry: Backup, job: Job, deep: bool, checks: dict[str, Any], error: str | None = None
) -> None:
    """The result on the catalog entry (retention and freshness read it) and in the audit."""
    result = {"error": error} if error else {"checks": checks}
    store.update(
        entry.id,
        verify_status="failed" if error else "ok",
        verified_at=utcnow(),
        verify_deep=deep,
        verify_error=error,
    )
    audit.record(
        "backup.verify_failed" if error else "backup.verified",
        entry.source,
        run_id=job.run_id,
        details={"backup_id": entry.id, "deep": deep, **result},
    )


def verify_backup(inputs: VerifyInput, job: Job) -> VerifyOutput:
    started = time.perf_counter()
    entry = resolve(inputs.backup_id, inputs.source)
    try:
        checks = _deep(entry, job, inputs) if inputs.deep else _rehash(entry, job)
    except Exception as exc:
        message = secrets.redact(str(exc) or type(exc).__name__)
        if entry.id not in message:
            message = f"backup {entry.id} ({entry.source}) failed verification: {message}"
        _record(entry, job, inputs.deep, {}, error=message)
        raise BackupError(message) from None
    _record(entry, job, inputs.deep, checks)
    return VerifyOutput(
        **facts(entry),
        deep=inputs.deep,
        checks=checks,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def summarize_verify(out: VerifyOutput) -> str:
    return f"{out.backup_id}: ok" + (" (deep)" if out.deep else " (sha256)")


# -- freshness ----------------------------------------------------------------------------


class FreshnessInput(StepInput):
    source: str | list[str] = Field(description="source(s) whose newest verified backup counts")
    max_age_s: float = Field(gt=0, description="recovery-point objective in seconds")


class FreshnessOutput(StepOutput):
    newest: dict[str, str] = Field(description="source → newest verified backup id")
    age_s: dict[str, float] = Field(description="source → age of that backup")
    max_age_s: float


def check_freshness(inputs: FreshnessInput) -> FreshnessOutput:
    sources = [inputs.source] if isinstance(inputs.source, str) else inputs.source
    now = utcnow()
    newest: dict[str, str] = {}
    ages: dict[str, float] = {}
    problems: list[str] = []
    for source in sources:
        entry = store.latest(source, verified=True)
        if entry is None:
            problems.append(f"{source}: no verified backup")
            continue
        created = store.aware(entry.created_at)
        assert created is not None
        age = (now - created).total_seconds()
        newest[source], ages[source] = entry.id, round(age, 1)
        if age > inputs.max_age_s:
            problems.append(
                f"{source}: newest verified backup {entry.id} is {age:.0f}s old (max {inputs.max_age_s:g}s)"
            )
    if problems:
        raise StepFailed("backups are stale: " + "; ".join(problems))
    return FreshnessOutput(newest=newest, age_s=ages, max_age_s=inputs.max_age_s)


def summarize_freshness(out: FreshnessOutput) -> str:
    return ", ".join(f"{s}: {a:.0f}s" for s, a in out.age_s.items())
