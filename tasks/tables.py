"""The `ktlo.tables` entry point: imports each domain's `store` module (its tables).

Light on purpose: the store calls it before creating tables, also in processes that never
load a step type.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

import tasks

for _info in pkgutil.iter_modules(tasks.__path__):
    if _info.ispkg and importlib.util.find_spec(f"tasks.{_info.name}.store") is not None:
        importlib.import_module(f"tasks.{_info.name}.store")
