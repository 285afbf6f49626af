"""The `ktlo.steps` entry point: registers every step type under tasks/.

The basic step types are modules of their own (log, shell, http, notify, approval); a domain
package registers its step types in its `steps` module. A new domain only has to exist
(a package without step types has no `steps` module).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

import tasks

BASIC = ("core", "shell", "http", "notify", "approval")


def _load() -> None:
    for name in BASIC:
        importlib.import_module(f"tasks.{name}")
    for info in pkgutil.iter_modules(tasks.__path__):
        if info.ispkg and importlib.util.find_spec(f"tasks.{info.name}.steps") is not None:
            importlib.import_module(f"tasks.{info.name}.steps")


_load()
