"""Router kinds, one module each on the base in `base.py`; importing the package registers them."""

from __future__ import annotations

import importlib
import pkgutil

from tasks.failover.routers.base import Router, RouterAction, RouterSpec, kinds, router_for

__all__ = ["Router", "RouterAction", "RouterSpec", "kinds", "router_for"]

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
