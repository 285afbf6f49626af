"""DR test helpers: a home with the shipped example (plan and runbooks) and its sample data
in a database of its own, so tests running side by side do not share a PostgreSQL database."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Home, require_service, run_runbook
from tests.helpers import REPO

PG = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Example:
    home: Home
    plans: Path
    database: str

    @property
    def plan(self) -> Path:
        return self.plans / "example.yaml"

    def edit_plan(self, old: str, new: str) -> None:
        text = self.plan.read_text(encoding="utf-8")
        assert old in text
        self.plan.write_text(text.replace(old, new), encoding="utf-8")


def example_home(home: Home) -> Example:
    """Copy the shipped plan and dr-* runbooks into the test's home and run the setup."""
    require_service("postgresql", 5432)
    plans = home.runbooks.parent / "plans"  # the default: beside the runbooks directory
    plans.mkdir()
    shutil.copy(REPO / "plans" / "example.yaml", plans / "example.yaml")
    for path in (REPO / "runbooks").glob("dr-*.yaml"):
        shutil.copy(path, home.runbooks / path.name)
    database = f"dr_test_{uuid.uuid4().hex[:10]}"
    result = run_runbook(
        home.runbooks / "dr-example-setup.yaml",
        database=database,
        uploads=str(home.path / "uploads"),
    )
    assert result.status == "succeeded", result.run.error if result.run else result.state
    return Example(home, plans, database)


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_exists(name: str) -> bool:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def drill(plan: str = "example") -> dict[str, Any]:
    from flows.dr import drill_flow

    call: Any = drill_flow(plan=plan, return_state=True)
    state = asyncio.run(call)
    assert state.is_completed(), state.message
    return dict(state.result())


@pytest.fixture
def example(prefect_api: str, home: Home) -> Iterator[Example]:
    ex = example_home(home)
    yield ex
    drop_database(ex.database)
