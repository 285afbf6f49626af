"""Backup and recovery: directories, SQLite, PostgreSQL and MariaDB, with a catalog.

Importing the package registers its step types: `backup.directory|sqlite|postgres|mariadb`,
`backup.verify`, `backup.prune`, `backup.freshness` and `restore.directory|sqlite|postgres|
mariadb`. See docs/backup.md.
"""

from tasks.backup import directory, mariadb, postgres, prune, sqlite, verify

__all__ = ["directory", "mariadb", "postgres", "prune", "sqlite", "verify"]
