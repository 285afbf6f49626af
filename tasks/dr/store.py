"""DR tables: drills (with their report), the scratch journal, and the last readiness seen.

Every scratch resource is journalled *before* it is created, with the drill's owner process,
so a drill that is killed half-way leaves rows that the next readiness pass cleans up.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Text
from sqlmodel import Field, SQLModel, col, select

from ktlo.store.db import session
from ktlo.store.models import utcnow


class Verdict(StrEnum):
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"


class Drill(SQLModel, table=True):
    __tablename__ = "ktlo_dr_drill"

    run_id: str = Field(primary_key=True, max_length=64)
    plan: str = Field(index=True, max_length=128)
    plan_hash: str = Field(max_length=64)
    verdict: str = Field(default=Verdict.RUNNING, max_length=16)  # a Verdict
    started_at: datetime = Field(default_factory=utcnow, index=True)
    finished_at: datetime | None = None
    report: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class Scratch(SQLModel, table=True):
    __tablename__ = "ktlo_dr_scratch"

    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, max_length=64)
    service: str = Field(max_length=128)
    kind: str = Field(max_length=16)  # database | directory
    name: str = Field(sa_column=Column(Text))  # database name or directory path
    server: str = Field(default="", sa_column=Column(Text))  # DSN of the database's server
    owner: str = Field(default="", max_length=256)  # host:pid of the drill process
    created_at: datetime = Field(default_factory=utcnow)
    cleaned_at: datetime | None = None


class Readiness(SQLModel, table=True):
    __tablename__ = "ktlo_dr_readiness"

    plan: str = Field(primary_key=True, max_length=128)
    ready: bool = False
    problems: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    changed_at: datetime = Field(default_factory=utcnow)


def start_drill(run_id: str, plan: str, plan_hash: str) -> None:
    with session() as s:
        s.merge(Drill(run_id=run_id, plan=plan, plan_hash=plan_hash))


def finish_drill(run_id: str, verdict: str, report: dict[str, Any]) -> None:
    with session() as s:
        row = s.get(Drill, run_id)
        if row is None:
            return
        row.verdict, row.report, row.finished_at = verdict, report, utcnow()
        s.add(row)


def get_drill(run_id: str) -> Drill | None:
    with session() as s:
        found = s.get(Drill, run_id)
        if found is None:
            query = select(Drill).where(col(Drill.run_id).startswith(run_id)).limit(2)
            rows = list(s.exec(query).all())
            found = rows[0] if len(rows) == 1 else None
        return found


def last_drills(plans: list[str]) -> dict[str, Drill]:
    """The newest finished drill of each plan (one query)."""
    with session() as s:
        query = (
            select(Drill)
            .where(col(Drill.plan).in_(plans), Drill.verdict != Verdict.RUNNING)
            .order_by(col(Drill.started_at).desc())
        )
        out: dict[str, Drill] = {}
        for row in s.exec(query).all():
            out.setdefault(row.plan, row)
        return out


def journal(entry: Scratch) -> Scratch:
    with session() as s:
        s.add(entry)
        s.flush()
        s.refresh(entry)
    return entry


def mark_cleaned(ids: list[int]) -> None:
    with session() as s:
        for row in s.exec(select(Scratch).where(col(Scratch.id).in_(ids))).all():
            row.cleaned_at = utcnow()
            s.add(row)


def leftovers(run_id: str | None = None) -> list[Scratch]:
    with session() as s:
        query = select(Scratch).where(col(Scratch.cleaned_at).is_(None))
        if run_id is not None:
            query = query.where(Scratch.run_id == run_id)
        return list(s.exec(query).all())


def readiness_states() -> dict[str, Readiness]:
    with session() as s:
        return {r.plan: r for r in s.exec(select(Readiness)).all()}


def save_readiness(plan: str, ready: bool, problems: list[str]) -> None:
    with session() as s:
        s.merge(Readiness(plan=plan, ready=ready, problems=problems, changed_at=utcnow()))
