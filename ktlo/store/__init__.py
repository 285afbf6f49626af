"""ktlo's own state (runs, steps, the audit trail, and later capabilities' tables) in SQLModel."""

from ktlo.store.db import engine, session

__all__ = ["engine", "session"]
