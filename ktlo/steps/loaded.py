"""Importing this module registers every step type, deferred ones included.

The fork server of `ktlo serve` preloads it, so a served run of any runbook starts with
every step type already imported.
"""

from ktlo.steps.registry import load_plugins

load_plugins()
