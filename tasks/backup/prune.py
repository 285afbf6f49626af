"""What `backup.prune` does: apply a retention policy to the catalog and delete what it lets go.

The decision is `retention.plan` (restic's `forget` semantics plus: the newest verified backup
of a source always stays). Deleting an entry marks it `pruning` first (so nothing takes it for
a usable backup any more), removes the object and its manifest, then marks it `pruned`; the
row stays as history. A deletion that fails puts the entry back to `complete`.
"""

from __future__ import annotations

from pydantic import Field

from ktlo import secrets
from ktlo.errors import StepFailed
from ktlo.fields import TimeZone
from ktlo.steps.registry import StepInput, StepOutput
from ktlo.store import audit
from ktlo.store.models import utcnow
from tasks.backup import retention, store
from tasks.backup.catalog import destination_of


class PruneInput(StepInput, retention.Policy):
    source: str | list[str] = Field(description="the source(s) to prune")
    dry_run: bool = Field(default=False, description="only report what would be removed")
    timezone: TimeZone = Field(default="UTC", description="time zone of the hour/day/week buckets")

    def policy(self) -> retention.Policy:
        return retention.Policy.model_validate(
            self.model_dump(include=set(retention.Policy.model_fields))
        )


class PruneOutput(StepOutput):
    kept: list[str]
    removed: list[str]
    dry_run: bool
    reasons: dict[str, list[str]]


def snapshots_of(source: str) -> list[retention.Snapshot]:
    return [
        retention.Snapshot(
            id=e.id,
            created=store.aware(e.created_at) or utcnow(),
            verified=e.verify_status == "ok",
        )
        for e in store.entries(source=source)
    ]


def prune(inputs: PruneInput, *, run_id: str | None = None) -> PruneOutput:
    sources = [inputs.source] if isinstance(inputs.source, str) else inputs.source
    policy = inputs.policy()
    out = PruneOutput(kept=[], removed=[], dry_run=inputs.dry_run, reasons={})
    errors: list[str] = []
    for source in sources:
        decision = retention.plan(snapshots_of(source), policy, inputs.timezone)
        out.kept += [s.id for s in decision.keep]
        out.reasons.update(decision.reasons)
        removed: list[str] = []
        for snap in decision.remove:
            error = None if inputs.dry_run else _remove(snap.id, source, run_id)
            if error:
                errors.append(error)
            else:
                removed.append(snap.id)
        out.removed += removed
        audit.record(
            "backup.prune",
            source,
            run_id=run_id,
            details={
                "policy": policy.model_dump(exclude_none=True),
                "dry_run": inputs.dry_run,
                "kept": [s.id for s in decision.keep],
                "removed": removed,
            },
        )
    if errors:
        raise StepFailed(
            f"prune removed {len(out.removed)} backups but failed on: " + "; ".join(errors)
        )
    return out


def _remove(backup_id: str, source: str, run_id: str | None) -> str | None:
    entry = store.update(backup_id, status=store.PRUNING)
    if entry is None:
        return None
    try:
        destination_of(entry).delete(entry.key)
    except Exception as exc:
        store.update(backup_id, status=store.COMPLETE)
        return secrets.redact(f"{backup_id}: {exc}")
    store.update(backup_id, status=store.PRUNED, pruned_at=utcnow())
    audit.record(
        "backup.pruned",
        source,
        run_id=run_id,
        details={"backup_id": backup_id, "location": entry.location},
    )
    return None


def summarize_prune(out: PruneOutput) -> str:
    verb = "would remove" if out.dry_run else "removed"
    return f"kept {len(out.kept)}, {verb} {len(out.removed)}"
