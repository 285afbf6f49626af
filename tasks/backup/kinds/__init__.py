"""Backup kinds, one module each on the base in `base.py`.

Importing this package imports every module in it, and each registers its kind: adding a
kind is adding a file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from tasks.backup.kinds.base import BackupKind, Restored, Scratch, kind_of, registered

__all__ = ["BackupKind", "Restored", "Scratch", "kind_of", "registered"]

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
