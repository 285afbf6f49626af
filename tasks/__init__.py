"""Reusable Prefect tasks, one module per domain; each registers the step types it provides."""
