"""Retention: restic `forget` semantics, checked against an independent oracle with
hypothesis, and the guarantee that the newest verified backup of every source survives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ktlo.store import audit
from ktlo.store.db import engine
from tasks.backup import store
from tasks.backup.prune import PruneInput, prune
from tasks.backup.retention import NEWEST_VERIFIED, Policy, Snapshot, apply_policy, plan
from tasks.backup.store import Backup
from tests.conftest import Home

BASE = datetime(2024, 1, 1, tzinfo=UTC)

# -- an independent statement of the policy ------------------------------------------------

KEYS = {
    "last": None,
    "hourly": "%Y-%m-%d %H",
    "daily": "%Y-%m-%d",
    "weekly": "%G-W%V",
    "monthly": "%Y-%m",
    "yearly": "%Y",
}


def oracle(snaps: list[Snapshot], policy: Policy) -> set[str]:
    """For each rule with count n: the newest backup of each of the n most recent distinct
    periods, plus the oldest backup when fewer than n periods exist before it (restic ≥ 0.14).
    An empty policy keeps everything."""
    ordered = sorted(snaps, key=lambda s: (s.created, s.id), reverse=True)
    if policy.empty:
        return {s.id for s in ordered}
    keep: set[str] = set()
    for rule, n in policy.counts().items():
        if n == 0 or not ordered:
            continue
        fmt = KEYS[rule]

        def key(s: Snapshot, fmt: str | None = fmt) -> str:
            return s.id if fmt is None else s.created.astimezone(UTC).strftime(fmt)

        newest_of: dict[str, Snapshot] = {}
        for s in ordered:
            newest_of.setdefault(key(s), s)
        periods = list(newest_of)  # newest period first
        chosen = periods if n == -1 else periods[:n]
        keep |= {newest_of[p].id for p in chosen}
        before_oldest = {key(s) for s in ordered[:-1]}
        if n == -1 or len(before_oldest) < n:
            keep.add(ordered[-1].id)
    return keep


counts = st.one_of(st.none(), st.integers(min_value=-1, max_value=6))
policies = st.builds(
    Policy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
)
# Minutes since BASE, clustered at several scales so that buckets collide and differ.
offsets = st.one_of(
    st.integers(0, 180),  # the same few hours
    st.integers(0, 60 * 24 * 20),  # a few weeks
    st.integers(0, 60 * 24 * 365 * 4),  # years
)
histories = st.lists(st.tuples(offsets, st.booleans()), max_size=40)


def snapshots(history: list[tuple[int, bool]], prefix: str = "b") -> list[Snapshot]:
    return [
        Snapshot(id=f"{prefix}{i:03d}", created=BASE + timedelta(minutes=m), verified=v)
        for i, (m, v) in enumerate(history)
    ]


@settings(max_examples=600, deadline=None)
@given(history=histories, policy=policies)
def test_policy_matches_the_oracle(history: list[tuple[int, bool]], policy: Policy) -> None:
    snaps = snapshots(history)
    decision = apply_policy(snaps, policy)
    assert {s.id for s in decision.keep} == oracle(snaps, policy)
    assert {s.id for s in decision.keep}.isdisjoint({s.id for s in decision.remove})
    assert len(decision.keep) + len(decision.remove) == len(snaps)
    assert set(decision.reasons) == {s.id for s in decision.keep}


@settings(max_examples=600, deadline=None)
@given(
    sources=st.dictionaries(st.sampled_from("abcde"), histories, min_size=1, max_size=4),
    policy=policies,
)
def test_newest_verified_backup_of_every_source_survives(
    sources: dict[str, list[tuple[int, bool]]], policy: Policy
) -> None:
    for name, history in sources.items():
        snaps = snapshots(history, prefix=name)
        decision = plan(snaps, policy)
        kept = {s.id for s in decision.keep}
        verified = sorted((s for s in snaps if s.verified), key=lambda s: (s.created, s.id))
        if verified:
            newest = verified[-1]
            assert newest.id in kept
            assert NEWEST_VERIFIED in decision.reasons[newest.id]
        # beyond that guarantee, exactly the policy
        expected = oracle(snaps, policy) | ({verified[-1].id} if verified else set())
        assert kept == expected


# -- restic's documented examples ----------------------------------------------------------


def _daily(n_days: int, per_day: int = 1) -> list[Snapshot]:
    return [
        Snapshot(id=f"d{d:02d}-{k}", created=BASE + timedelta(days=d, hours=k))
        for d in range(n_days)
        for k in range(per_day)
    ]


def test_keep_daily_keeps_the_newest_of_each_day() -> None:
    snaps = _daily(10, per_day=3)
    kept = [s.id for s in apply_policy(snaps, Policy(keep_daily=4)).keep]
    assert kept == ["d09-2", "d08-2", "d07-2", "d06-2"]


def test_counts_left_over_keep_the_oldest() -> None:
    snaps = _daily(3)
    kept = [s.id for s in apply_policy(snaps, Policy(keep_weekly=5)).keep]
    assert kept == ["d02-0", "d00-0"]  # one week only: its newest, and the oldest with count left


def test_empty_policy_keeps_everything_and_minus_one_is_unlimited() -> None:
    snaps = _daily(5, per_day=2)
    assert len(apply_policy(snaps, Policy()).keep) == 10
    assert len(apply_policy(snaps, Policy(keep_daily=-1)).keep) == 6  # 5 days + the oldest


def test_buckets_follow_the_time_zone() -> None:
    hours = {"a": 1, "b": 14, "c": 16, "d": 23}  # Jan 1 UTC; from 15:00 it is Jan 2 in Tokyo
    snaps = [Snapshot(i, datetime(2024, 1, 1, h, tzinfo=UTC)) for i, h in hours.items()]
    utc = [s.id for s in apply_policy(snaps, Policy(keep_daily=2), "UTC").keep]
    tokyo = [s.id for s in apply_policy(snaps, Policy(keep_daily=2), "Asia/Tokyo").keep]
    assert utc == ["d", "a"]  # one day: its newest, then the oldest with the count left
    assert tokyo == ["d", "b"]  # two days: the newest of each


# -- prune over the real catalog -----------------------------------------------------------


def _catalog(history: dict[str, list[tuple[int, bool]]], dest: Path) -> None:
    with engine().begin() as conn:
        conn.exec_driver_sql("DELETE FROM ktlo_backup")
    for source, items in history.items():
        for snap in snapshots(items, prefix=source):
            key = f"{source}/{snap.id}.bin"
            (dest / source).mkdir(parents=True, exist_ok=True)
            (dest / key).write_bytes(b"x")
            store.add(
                Backup(
                    id=snap.id,
                    source=source,
                    kind="directory",
                    status=store.COMPLETE,
                    created_at=snap.created,
                    destination={"url": str(dest)},
                    location=str(dest / key),
                    key=key,
                    size=1,
                    sha256="0" * 64,
                    verify_status="ok" if snap.verified else None,
                )
            )


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    history=st.dictionaries(
        st.sampled_from(["src-a", "src-b", "src-c"]),
        st.lists(st.tuples(offsets, st.booleans()), max_size=12),
        min_size=1,
        max_size=3,
    ),
    policy=policies,
)
def test_prune_step_over_the_catalog(
    home: Home, tmp_path: Path, history: dict[str, list[tuple[int, bool]]], policy: Policy
) -> None:
    dest = tmp_path / "dest"
    _catalog(history, dest)
    out = prune(PruneInput(source=list(history), **policy.model_dump()))
    for source, items in history.items():
        snaps = snapshots(items, prefix=source)
        verified = sorted((s for s in snaps if s.verified), key=lambda s: (s.created, s.id))
        expected = oracle(snaps, policy) | ({verified[-1].id} if verified else set())
        remaining = {e.id for e in store.entries(source=source)}
        assert remaining == expected
        if verified:
            assert verified[-1].id in remaining
        for snap in snaps:
            assert (dest / source / f"{snap.id}.bin").exists() == (snap.id in expected)
    assert set(out.removed) == {e.id for e in store.entries(statuses=(store.PRUNED,))}


def test_prune_dry_run_changes_nothing_and_is_audited(home: Home, tmp_path: Path) -> None:
    _catalog({"src": [(m * 60 * 24, m == 2) for m in range(6)]}, tmp_path)
    out = prune(PruneInput(source="src", keep_last=1, dry_run=True))
    assert out.kept == ["src005", "src002"]  # the newest, and the newest verified
    assert out.reasons["src002"] == [NEWEST_VERIFIED]
    assert len(out.removed) == 4
    assert len(store.entries(source="src")) == 6
    [event] = audit.events(action_prefix="backup.prune")
    assert event.details["dry_run"] is True
    assert event.details["removed"] == out.removed


def test_prune_through_a_runbook(home: Home, run: Any, tmp_path: Path) -> None:
    _catalog({"src": [(m * 60, False) for m in range(5)]}, tmp_path)
    path = home.runbook(
        "prune",
        """
        name: prune
        steps:
          - id: prune
            uses: backup.prune
            with: {source: src, keep_last: 2}
        """,
    )
    result = run(path)
    assert result.status == "succeeded", result.steps["prune"].error
    assert result.steps["prune"].summary == "kept 2, removed 3"
    assert [e.id for e in store.entries(source="src")] == ["src004", "src003"]
    assert len(audit.events(action_prefix="backup.pruned")) == 3


def test_prune_rejects_bad_policies() -> None:
    with pytest.raises(ValueError, match="greater than or equal to -1"):
        PruneInput(source="x", keep_daily=-2)
    with pytest.raises(ValueError, match="unknown timezone"):
        PruneInput(source="x", timezone="Mars/Olympus")
