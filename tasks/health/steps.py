"""The health domain's step types: `health.sweep`."""

from tasks.health import sweep

__all__ = ["sweep"]
