"""Sections of domains that may or may not be installed: patching and DR.

They are looked up at run time, so the dashboard works (without those sections) before the
domains exist in a deployment; a domain that is present but fails to answer shows a note
instead of breaking the page.
"""

from __future__ import annotations

import importlib.util
import logging

from ktlo.app.dashboard.model import Section

log = logging.getLogger("ktlo.app.dashboard")


def present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def gather() -> list[Section]:
    return []
