"""Reusable Prefect tasks, one module per domain; each registers the step types it provides.

Importing the package imports every module in it (the `ktlo.steps` entry point names this
package), so a new domain module only has to exist.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
