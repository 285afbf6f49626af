"""Reusable Prefect tasks: the basic step types (one module each) and one package per domain.

Importing this package imports nothing else, so a domain's store can be used without loading
Prefect. `tasks.plugin` registers every step type, `tasks.tables` every domain's tables.
"""
