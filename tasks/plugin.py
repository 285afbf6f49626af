"""The `ktlo.steps` entry point: registers every step type under tasks/.

The basic step types are modules of their own (log, shell, http, notify, approval), loaded
with this module; a domain package registers its step types in its `steps` module, loaded
when first needed (`load_deferred`). A new domain only has to exist
(a package without step types has no `steps` module).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

import tasks

BASIC = ("core", "shell", "http", "notify", "approval")


def load_deferred() -> None:
    """The domains' step types: loaded by the registry when a runbook uses one (they import
    SSH, database and cloud libraries, seconds a run of basic steps would wait for)."""
    for info in pkgutil.iter_modules(tasks.__path__):
        if info.ispkg and importlib.util.find_spec(f"tasks.{info.name}.steps") is not None:
            importlib.import_module(f"tasks.{info.name}.steps")


for _name in BASIC:
    importlib.import_module(f"tasks.{_name}")
