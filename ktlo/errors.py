"""Errors an operator can act on: they carry a one-line message and never a traceback."""

from __future__ import annotations

from dataclasses import dataclass


class KtloError(Exception):
    """A failure with a message written for the operator; the CLI prints it as one line."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a runbook, located at `path:line`."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


class RunbookInvalid(KtloError):
    """A runbook failed validation; nothing was run."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StepFailed(KtloError):
    """A step did what it was asked but the result was not the expected one."""
