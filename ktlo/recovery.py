"""Recovery points: what a domain that holds data (the backup catalog, a replica) can offer
to one that recovers it (DR), without either importing the other.

A provider is registered under a data kind (`backup`, `replica`, …) by the domain that owns
the data; DR asks `latest_points` for many sources at once (readiness checks hundreds of
services, so a provider answers a whole batch with one query).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import datetime

from pydantic import BaseModel, Field

from ktlo.errors import KtloError


class RecoveryPoint(BaseModel):
    """One restorable copy of a source's data, as of `time`."""

    provider: str = Field(description="the data kind whose provider offered it, e.g. backup")
    source: str
    id: str = Field(description="what the recover runbook restores, e.g. a backup id")
    time: datetime = Field(description="point in time of the data (RPO is measured from it)")
    kind: str = Field(default="", description="e.g. postgres, directory")
    size: int | None = None
    verified: bool = False
    verified_at: datetime | None = None
    checksums: dict[str, str] = Field(default_factory=dict, description="e.g. {'sha256': …}")
    row_counts: dict[str, int] = Field(default_factory=dict, description="table → rows, if known")


# A provider answers: for each source asked, its newest point (verified only when asked).
Provider = Callable[[list[str], bool], dict[str, RecoveryPoint]]

_providers: dict[str, Provider] = {}


def register(kind: str, provider: Provider) -> Provider:
    """Offer recovery points of data kind `kind` (called by the domain owning the data)."""
    _providers[kind] = provider
    return provider


def provider_kinds() -> list[str]:
    _load_tables()
    return sorted(_providers)


def latest_points(
    kind: str, sources: Iterable[str], *, verified: bool = True
) -> dict[str, RecoveryPoint]:
    """The newest point of each source (missing sources are absent from the answer)."""
    _load_tables()
    provider = _providers.get(kind)
    if provider is None:
        known = ", ".join(sorted(_providers)) or "none"
        raise KtloError(f"no recovery-point provider for data kind '{kind}' (known: {known})")
    wanted = sorted(set(sources))
    return provider(wanted, verified) if wanted else {}


@functools.cache
def _load_tables() -> None:
    """Providers register beside their domain's tables: import those rather than count on
    the store having imported them when it opened (a stamped store does not)."""
    from ktlo.store.db import import_table_modules

    import_table_modules()
