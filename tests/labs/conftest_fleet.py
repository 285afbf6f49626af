"""Pytest fixtures for the SSH fleet lab; tests/conftest.py imports them:

    from tests.labs.conftest_fleet import fleet, fleet_lab  # noqa: F401

`fleet_lab` builds and starts the lab once per session (`KTLO_LAB_HOSTS` hosts, default 20);
`fleet` hands it to one test with every host reset to how it was built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.labs.fleet import Fleet, LabUnavailable


@pytest.fixture(scope="session")
def fleet_lab() -> Iterator[Fleet]:
    """The SSH fleet lab, built (parts cached across sessions) and started once per session."""
    from tests.conftest import unavailable  # here: tests/conftest.py imports this module

    try:
        lab = Fleet(int(os.environ.get("KTLO_LAB_HOSTS", "20"))).build()
    except LabUnavailable as exc:
        unavailable(str(exc))
    try:
        yield lab.start()
    finally:
        lab.stop()


@pytest.fixture
def fleet(fleet_lab: Fleet) -> Fleet:
    """The session's lab with every host as built: packages, venv, health, sshd up, no locks."""
    fleet_lab.reset()
    return fleet_lab
