"""ktlo: operations runbooks (monitoring, backup, patching, failover, DR) as Prefect flows."""

__version__ = "0.1.0"
