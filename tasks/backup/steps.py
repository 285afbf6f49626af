"""The backup domain's step types: `backup.<kind>` and `restore.<kind>` for each kind, and
`backup.verify`, `backup.prune`, `backup.freshness`."""

from tasks.backup import directory, mariadb, postgres, prune, sqlite, verify

__all__ = ["directory", "mariadb", "postgres", "prune", "sqlite", "verify"]
