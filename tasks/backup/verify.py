"""`backup.verify` and `backup.freshness`: is the backup still good, and is it recent enough?

Verification re-reads the stored object and checks its size and sha256 against the catalog
(no key needed). `deep` also restores it into a scratch place and checks the result: a
temporary directory for directories, `PRAGMA integrity_check` for SQLite, a scratch database
(dropped afterwards) for PostgreSQL and MariaDB when `scratch_dsn` names a server. The result
is recorded on the catalog entry; retention and freshness only trust verified store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from pydantic import Field, model_validator

from ktlo import secrets
from ktlo.errors import StepFailed
from ktlo.steps.registry import StepInput, StepOutput, step_task
from ktlo.store import audit
from ktlo.store.models import utcnow
from tasks.backup import directory, mariadb, postgres, sqlite, store
from tasks.backup.catalog import resolve, stored
from tasks.backup.jobs import in_thread, run_ids
from tasks.backup.model import LATEST, BackupError
from tasks.backup.store import Backup
from tasks.backup.stream import Job


class VerifyInput(StepInput):
    backup_id: str = Field(description="a backup id (or a unique prefix), or 'latest'")
    source: str | None = Field(default=None, description="with backup_id 'latest': which source")
    deep: bool = Field(default=False, description="also restore into a scratch place and check it")
    scratch_dsn: str | None = Field(
        default=None, description="deep, databases: server to create a scratch database on"
    )
    scratch_dir: str | None = Field(default=None, description="deep, files: where to extract")

    @model_validator(mode="after")
    def _latest_needs_source(self) -> VerifyInput:
        if self.backup_id == LATEST and not self.source:
            raise ValueError("backup_id 'latest' needs 'source'")
        return self


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
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "directory": lambda: directory.deep_check(entry, job, inputs.scratch_dir),
        "sqlite": lambda: sqlite.deep_check(entry, job, inputs.scratch_dir),
        "postgres": lambda: postgres.deep_check(entry, job, inputs.scratch_dsn),
        "postgres_globals": lambda: postgres.deep_check(entry, job, None),
        "mariadb": lambda: mariadb.deep_check(entry, job, inputs.scratch_dsn),
    }
    if entry.kind not in checks:
        raise BackupError(f"backup {entry.id}: no deep check for kind {entry.kind}")
    return checks[entry.kind]()


def _rehash(entry: Backup, job: Job) -> dict[str, Any]:
    with stored(entry, job, decrypt=False) as handle:
        handle.finish()
    return {}


def verify_backup(inputs: VerifyInput, job: Job, *, run_id: str | None = None) -> VerifyOutput:
    started = time.perf_counter()
    entry = resolve(inputs.backup_id, inputs.source)
    try:
        checks = _deep(entry, job, inputs) if inputs.deep else _rehash(entry, job)
    except Exception as exc:
        message = secrets.redact(str(exc) or type(exc).__name__)
        if entry.id not in message:
            message = f"backup {entry.id} ({entry.source}) failed verification: {message}"
        store.update(
            entry.id,
            verify_status="failed",
            verified_at=utcnow(),
            verify_deep=inputs.deep,
            verify_error=message,
        )
        audit.record(
            "backup.verify_failed",
            entry.source,
            run_id=run_id,
            details={"backup_id": entry.id, "deep": inputs.deep, "error": message},
        )
        raise BackupError(message) from None
    store.update(
        entry.id,
        verify_status="ok",
        verified_at=utcnow(),
        verify_deep=inputs.deep,
        verify_error=None,
    )
    audit.record(
        "backup.verified",
        entry.source,
        run_id=run_id,
        details={"backup_id": entry.id, "deep": inputs.deep, "checks": checks},
    )
    return VerifyOutput(
        backup_id=entry.id,
        source=entry.source,
        kind=entry.kind,
        deep=inputs.deep,
        size=entry.size or 0,
        sha256=entry.sha256 or "",
        checks=checks,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )


def summarize_verify(out: VerifyOutput) -> str:
    return f"{out.backup_id}: ok" + (" (deep)" if out.deep else " (sha256)")


@step_task("backup.verify", VerifyInput, VerifyOutput, summarize=summarize_verify)
async def verify_step(inputs: VerifyInput) -> VerifyOutput:
    """Verify a backup: re-hash the stored object; `deep` also restores it and checks it."""
    run_id, _ = run_ids()
    return await in_thread(lambda job: verify_backup(inputs, job, run_id=run_id))


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


@step_task(
    "backup.freshness",
    FreshnessInput,
    FreshnessOutput,
    summarize=lambda out: ", ".join(f"{s}: {a:.0f}s" for s, a in out.age_s.items()),
)
async def freshness_step(inputs: FreshnessInput) -> FreshnessOutput:
    """Fail when the newest verified backup of a source is older than max_age_s."""
    return check_freshness(inputs)
