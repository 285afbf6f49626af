"""Prefect flows: the generic runbook flow and the named procedures."""
