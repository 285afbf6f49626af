"""The statuses ktlo records, as enums: a typo is a type error, not a silent new state.

They are `StrEnum`s, stored as their text (the store's columns stay strings) and compared
equal to it, so rows written before this module existed read back unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    SUCCEEDED_WITH_ERRORS = "succeeded_with_errors"
    FAILED = "failed"
    CRASHED = "crashed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self is not RunStatus.RUNNING

    @property
    def ok(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.SUCCEEDED_WITH_ERRORS)


class StepStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    NOT_RUN = "not_run"


class RunTrigger(StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    INCIDENT = "incident"
    SUBFLOW = "subflow"
    DEPLOYMENT = "deployment"


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
