"""The runbooks an incident can start: those with triggers, reloaded when the directory changes."""

from __future__ import annotations

import time
from pathlib import Path

from ktlo.runbook.model import Runbook

RECHECK_S = 1.0  # how soon a changed runbook counts for new alerts


class RunbookIndex:
    """Runbooks with triggers, reloaded when a file in the runbooks directory changes.

    The directory is looked at again at most every `recheck_s`: listing and stat-ing it for
    every alert was a seventh of the receiver's CPU under a burst.
    """

    def __init__(self, directory: Path | None = None, recheck_s: float = RECHECK_S):
        self.directory = directory
        self.recheck_s = recheck_s
        self._stamp: dict[str, float] | None = None
        self._checked = 0.0
        self._runbooks: list[Runbook] = []

    def runbooks(self) -> list[Runbook]:
        from ktlo.runbook.loader import load_all

        if self._stamp is not None and time.monotonic() - self._checked < self.recheck_s:
            return self._runbooks
        from ktlo.runbook.loader import fingerprint

        stamp = fingerprint(self.directory)
        if stamp != self._stamp:
            runbooks, _problems = load_all(self.directory)
            self._runbooks = [rb for rb in runbooks if rb.triggers]
            self._stamp = stamp
        self._checked = time.monotonic()
        return self._runbooks

    def get(self, name: str) -> Runbook | None:
        return next((rb for rb in self.runbooks() if rb.name == name), None)
