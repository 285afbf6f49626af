"""Assemble the pages from their sections; `render` and the JSON endpoints take them as is."""

from __future__ import annotations

from datetime import datetime

from ktlo.app.dashboard import backups, checks, domains, incidents
from ktlo.app.dashboard.model import Page, PublicPage
from ktlo.store.models import utcnow


def operator_page(now: datetime | None = None) -> Page:
    now = now or utcnow()
    found = checks.gather(now)
    return Page(
        generated_at=now,
        overall=checks.overall(found),
        checks=found,
        backups=backups.gather(now),
        incidents=incidents.gather(),
        sections=domains.gather(),
    )


def public_page(now: datetime | None = None) -> PublicPage:
    now = now or utcnow()
    found = checks.gather(now)
    return PublicPage(generated_at=now, overall=checks.overall(found), groups=checks.public(found))
