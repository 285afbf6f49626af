"""Check types: `base` (what every type shares, the registry) and one module per type.

To add a check type, add a module here defining a `CheckBase` subclass with its fields, a
`type: Literal["<name>"]`, its `PLACEHOLDERS`, `DEFAULT_CONDITIONS`, `target()` and
`probe()` (see `base`). Importing this package imports every module in it, which registers
each type in `CHECK_TYPES`; the sweep's input union, condition validation and probing are
built from that registry, so nothing else changes.
"""

from __future__ import annotations

import importlib
import pkgutil

from tasks.health.checks.base import CHECK_TYPES, CheckBase, CheckSettings

# The order messages and docs list the types in (network, databases, local); a type not
# named here follows them, alphabetically. Naming a new type here is optional.
LISTED = ("http", "tcp", "dns", "tls", "postgres", "mysql", "redis", "disk", "command")


def _load() -> None:
    found = {info.name for info in pkgutil.iter_modules(__path__)} - {"base"}
    for name in [*(n for n in LISTED if n in found), *sorted(found - set(LISTED))]:
        importlib.import_module(f"{__name__}.{name}")


_load()

__all__ = ["CHECK_TYPES", "CheckBase", "CheckSettings"]
