"""Backup and recovery: directories, SQLite, PostgreSQL and MariaDB, with a catalog.

Its step types (registered by `tasks.backup.steps`): `backup.directory|sqlite|postgres|mariadb`,
`backup.verify`, `backup.prune`, `backup.freshness` and `restore.directory|sqlite|postgres|
mariadb`. See docs/backup.md.
"""
