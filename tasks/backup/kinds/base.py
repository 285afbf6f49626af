"""The shape every backup kind has, and the registry that finds a kind by catalog entry.

A kind is one module in this package: a subclass of `BackupKind[BackupInputModel,
RestoreInputModel, what backup returns]` with a `name`, `backup`, `restore_entry` and
`deep_check`, and `register(TheKind())`. From the registry, `tasks.backup.steps` makes the
step types `backup.<name>` and `restore.<name>`, and `backup.verify` and `ktlo restore`
find the kind of a catalog entry (`kind_of`).
"""

from __future__ import annotations

import re
import secrets as _random
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast, get_args, get_origin

from ktlo import secrets
from ktlo.store import audit
from tasks.backup.catalog import resolve
from tasks.backup.model import BackupError, BackupInput, BackupOutput, RestoreInput, RestoreOutput
from tasks.backup.store import Backup
from tasks.backup.stream import Job
from tasks.backup.writer import Outcome, output_of

BackupIn = TypeVar("BackupIn", bound=BackupInput)
RestoreIn = TypeVar("RestoreIn", bound=RestoreInput)
Made = TypeVar("Made")  # what `backup` returns: an Outcome, or more than one
K = TypeVar("K", bound="BackupKind[Any, Any, Any]")


@dataclass(frozen=True)
class Scratch:
    """Where a deep check may restore to: a directory for files, a server for databases."""

    dir: str | None = None
    dsn: str | None = None

    @staticmethod
    def database_for(entry: Backup) -> str:
        """A fresh database name for a deep check of `entry` (dropped afterwards)."""
        token = re.sub(r"[^a-z0-9]", "", entry.id.lower())[-12:]
        return f"ktlo_verify_{token}_{_random.token_hex(3)}"


@dataclass
class Restored:
    """What a restore did; `bytes` and `checks` also go into the `backup.restored` audit."""

    target: str
    bytes: int = 0
    sha256: str = ""
    checks: dict[str, Any] = field(default_factory=dict)


@contextmanager
def restoring(entry: Backup, target: str, job: Job) -> Iterator[Restored]:
    """Audit a restore: `backup.restored` with what the body filled in, or `…_failed`."""
    done = Restored(target)
    try:
        yield done
    except BaseException as exc:
        audit.record(
            "backup.restore_failed",
            entry.source,
            run_id=job.run_id,
            details={"backup_id": entry.id, "target": target, "error": secrets.redact(str(exc))},
        )
        raise
    audit.record(
        "backup.restored",
        entry.source,
        run_id=job.run_id,
        details={
            "backup_id": entry.id,
            "kind": entry.kind,
            "target": target,
            "bytes": done.bytes,
            **done.checks,
        },
    )


class BackupKind(ABC, Generic[BackupIn, RestoreIn, Made]):
    """One kind of backup. `name` names its step types and its catalog entries; the type
    parameters are the input models of its steps and what `backup` returns; the first line
    of the docstrings of `backup` and `restore_entry` describes the step types."""

    name: str
    also_restores: tuple[str, ...] = ()  # further catalog kinds it restores and checks
    backup_input: type[BackupIn]  # from the type parameters
    restore_input: type[RestoreIn]
    backup_output: type[BackupOutput] = BackupOutput

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if get_origin(base) is BackupKind:
                cls.backup_input, cls.restore_input, _ = get_args(base)

    @property
    def entry_kinds(self) -> tuple[str, ...]:
        return (self.name, *self.also_restores)

    @abstractmethod
    def backup(self, inputs: BackupIn, job: Job) -> Made:
        """Make a backup (through `writer.perform_backup`)."""

    def output(self, made: Made) -> BackupOutput:
        """The step's output; a kind whose `backup` makes more than one Outcome overrides it."""
        return output_of(cast(Outcome, made))

    def restore(self, inputs: RestoreIn, job: Job) -> RestoreOutput:
        """Find the backup `inputs` names, check it is of this kind, and restore it."""
        started = time.perf_counter()
        entry = resolve(inputs.backup_id, inputs.source)
        if entry.kind not in self.entry_kinds:
            raise BackupError(
                f"backup {entry.id} is a {entry.kind} backup; this needs {' or '.join(self.entry_kinds)}"
            )
        done = self.restore_entry(entry, inputs, job)
        return RestoreOutput(
            backup_id=entry.id,
            source=entry.source,
            target=done.target,
            bytes=done.bytes,
            sha256=done.sha256,
            checks=done.checks,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )

    @abstractmethod
    def restore_entry(self, entry: Backup, inputs: RestoreIn, job: Job) -> Restored:
        """Restore `entry` as `inputs` say: refuse an occupied target without `overwrite`,
        then do the work inside `restoring(...)`, which audits it."""

    @abstractmethod
    def deep_check(self, entry: Backup, job: Job, scratch: Scratch) -> dict[str, Any]:
        """Restore `entry` into a scratch place and check the result (`backup.verify deep`)."""

    def restore_target(self, to: str, entry_kind: str) -> dict[str, Any]:
        """The restore inputs naming `ktlo restore --to TO`'s target: a path, by default."""
        return {"target": to}

    def restore_input_for(self, entry: Backup, to: str, **options: Any) -> RestoreIn:
        """The inputs of `ktlo restore`; options this kind's inputs lack are left out (the
        PostgreSQL-only `no_owner` for a directory, say)."""
        known = {k: v for k, v in options.items() if k in self.restore_input.model_fields}
        return self.restore_input.model_validate({**known, **self.restore_target(to, entry.kind)})


_KINDS: dict[str, BackupKind[Any, Any, Any]] = {}
_BY_ENTRY_KIND: dict[str, BackupKind[Any, Any, Any]] = {}


def register(kind: K) -> K:
    """Add a kind to the registry (its module does this once, when it is imported)."""
    for name in kind.entry_kinds:
        other = _BY_ENTRY_KIND.get(name)
        if other is not None and type(other) is not type(kind):
            raise BackupError(f"backup kind '{name}' is registered twice")
        _BY_ENTRY_KIND[name] = kind
    _KINDS[kind.name] = kind
    return kind


def registered() -> list[BackupKind[Any, Any, Any]]:
    return [_KINDS[name] for name in sorted(_KINDS)]


def kind_of(entry: Backup) -> BackupKind[Any, Any, Any]:
    """The kind that restores and checks a catalog entry."""
    kind = _BY_ENTRY_KIND.get(entry.kind)
    if kind is None:
        raise BackupError(
            f"backup {entry.id} is of kind '{entry.kind}', which no backup kind handles"
        )
    return kind
