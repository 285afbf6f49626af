"""Backup and recovery: directories, SQLite, PostgreSQL and MariaDB, with a catalog.

Each kind is one module in `kinds/` on the `BackupKind` base; `steps` registers the step
types `backup.<kind>` and `restore.<kind>` for every kind, and `backup.verify`,
`backup.prune`, `backup.freshness`. `commands` is what the CLI runs. See docs/backup.md.
"""
