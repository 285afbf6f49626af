"""Failover on the real lab (tests/labs/pgcluster.py): PostgreSQL 15 primary + 2 streaming
replicas behind HAProxy, a writer process recording every acknowledged id.

One lab for the module; the tests run in file order and each leaves a healthy cluster (one
primary, both others streaming). What is judged: no acknowledged write lost in synchronous
mode, a lagging candidate not promoted without approval, an old primary back with its data
never routed a write and fenced, zero-loss switchover both ways, one run acting per failure,
an unreachable old primary recorded as fence unconfirmed while routing still moves.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import Home, unavailable
from tests.helpers import KTLO, REPO, cli
from tests.labs.pgcluster import PgLab, Role, build, lab_unavailable
from tests.labs.procs import free_port

RUNBOOKS = REPO / "runbooks"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgLab]:
    reason = lab_unavailable()
    if reason:
        unavailable(reason)
    lab = build(tmp_path_factory.mktemp("failover"), nodes=3, synchronous=True)
    try:
        yield lab
    finally:
        lab.stop_all()


def write_config(lab: PgLab, home: Home, **cluster: Any) -> dict[str, str]:
    """clusters.yaml (SPEC §10 shape, router dsn for the write probe) and the env to use it."""
    config = lab.cluster_config("lab")
    config["clusters"]["lab"]["router"]["dsn"] = lab.router_dsn
    config["clusters"]["lab"].update(cluster)
    path = home.path / "clusters.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    os.environ["KTLO_CLUSTERS"] = str(path)
    from ktlo.settings import reload_settings

    reload_settings()
    return {**home.env, "KTLO_CLUSTERS": str(path)}


@pytest.fixture
def env(lab: PgLab, home: Home, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("KTLO_CLUSTERS", str(home.path / "clusters.yaml"))
    return write_config(lab, home)


def with_ctx(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from ktlo.hosts.runner import HostRunner
    from tasks.failover.model import get_cluster
    from tasks.failover.ops import Ctx

    async def go() -> Any:
        async with HostRunner() as runner:
            return await fn(Ctx("lab", get_cluster("lab"), runner))

    return asyncio.run(go())


def primary(lab: PgLab) -> str:
    found = lab.primaries()
    assert len(found) == 1, lab.status()
    return found[0]


def rejoin(node: str) -> dict[str, Any]:
    from tasks.failover import rejoin as rj

    return with_ctx(lambda ctx: rj.rejoin(ctx, node))


def assert_healthy(lab: PgLab, expected: str) -> None:
    assert lab.primaries() == [expected]
    lab.wait_streaming(expected, len(lab.nodes) - 1)
    assert lab.router is not None
    assert lab.router.up_servers() == [expected]


def kill_and_watch(lab: PgLab, victim: str) -> tuple[float, dict[str, Any]]:
    """Start the in-process watch, kill -9 the primary, return (kill time, failover output)."""
    from tasks.failover import watch

    acted: list[dict[str, Any]] = []

    async def collect(out: dict[str, Any]) -> None:
        acted.append(out)

    async def go(ctx: Any) -> float:
        task = asyncio.create_task(
            watch.watch(
                ctx, interval_s=0.1, fall=2, duration_s=60, max_failovers=1, on_action=collect
            )
        )
        await asyncio.sleep(0.3)
        killed = await asyncio.to_thread(lab.kill9, victim)
        await task
        return killed

    killed = with_ctx(go)
    assert len(acted) == 1
    return killed, acted[0]


def start_failover(env: dict[str, str]) -> subprocess.Popen[str]:
    """`ktlo run pg-failover -p cluster=lab --json` in its own process (as an alert would)."""
    return subprocess.Popen(
        [KTLO, "run", str(RUNBOOKS / "pg-failover.yaml"), "-p", "cluster=lab", "--json"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def published_timeline(flow_run_id: str) -> list[dict[str, Any]]:
    """The failover artifact's table on the flow run (the Prefect UI's evidence)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> Any:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["failover-lab"]))
            )
            return [a for a in found if str(a.flow_run_id) == flow_run_id]

    (artifact,) = asyncio.run(read())
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def audit_actions() -> list[str]:
    from ktlo.store.audit import events

    return [e.action for e in events(limit=1000)]


def test_status_json_and_a_healthy_cluster_is_left_alone(
    lab: PgLab, env: dict[str, str], run: Any
) -> None:
    done = cli("failover", "status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    (cluster,) = data["clusters"]
    assert cluster["name"] == "lab"
    assert cluster["primary"] == "n1"
    roles = {n["name"]: (n["role"], n["reachable"]) for n in cluster["nodes"]}
    assert roles == {"n1": ("primary", True), "n2": ("replica", True), "n3": ("replica", True)}
    assert all(isinstance(n["lag_bytes"], int) for n in cluster["nodes"])
    result = run(RUNBOOKS / "pg-failover.yaml", cluster="lab")
    assert result.status == "succeeded"
    out = result.steps["failover"].output
    assert out["outcome"] == "healthy"
    assert out["actions"] == []
    assert result.steps["approve"].status == "skipped"
    assert_healthy(lab, "n1")


def test_kill9_in_sync_mode_five_times_loses_no_acknowledged_write(
    lab: PgLab, env: dict[str, str], run: Any
) -> None:
    writer = lab.writer("kills")
    killed: list[str] = []
    try:
        for i in range(5):
            old = primary(lab)
            writer.wait_ack_after(time.monotonic())
            if i == 0:  # once through the shipped runbook, after the kill
                t = lab.kill9(old)
                result = run(RUNBOOKS / "pg-failover.yaml", cluster="lab")
                assert result.status == "succeeded"
                out = result.steps["failover"].output
            else:
                t, out = kill_and_watch(lab, old)
            killed.append(old)
            assert out["outcome"] == "failed_over", out
            if i == 0:
                assert published_timeline(result.run.id) == out["timeline"]
            new = out["new_primary"]
            events = [e["event"] for e in out["timeline"]]
            assert events == [
                "failure_observed",
                "decided",
                "fenced",
                "promoted",
                "routed",
                "first_write_acknowledged",
            ]
            writer.wait_ack_after(t, port=lab.nodes[new].port)
            if i == 1:
                result = run(RUNBOOKS / "pg-rejoin.yaml", cluster="lab", node=old)
                assert result.status == "succeeded"
                assert result.steps["rejoin"].output["detail"]["method"] in ("rewind", "basebackup")
            else:
                assert rejoin(old)["streaming"] is True
            assert_healthy(lab, new)
            assert lab.status()[old].role is Role.REPLICA
    finally:
        writer.stop()
    assert len(set(killed)) >= 2, killed  # the primary moved between nodes
    new = primary(lab)
    assert len(writer.acks()) > 50
    assert writer.lost_ids(lab.nodes[new].dsn) == []
    actions = audit_actions()
    assert "failover.fenced" in actions
    assert "failover.promoted" in actions
    assert "failover.rejoined" in actions


def test_old_primary_back_with_its_data_gets_no_write_and_is_fenced(
    lab: PgLab, env: dict[str, str]
) -> None:
    from tasks.failover import watch

    writer = lab.writer("splitbrain")
    try:
        old = primary(lab)
        t, out = kill_and_watch(lab, old)
        new = out["new_primary"]
        writer.wait_ack_after(t, port=lab.nodes[new].port)
        back = time.monotonic()
        lab.start(old)  # its own data, its old timeline: a second primary
        assert sorted(lab.primaries()) == sorted([old, new])
        acted: list[dict[str, Any]] = []

        async def collect(o: dict[str, Any]) -> None:
            acted.append(o)

        with_ctx(
            lambda ctx: watch.watch(
                ctx, interval_s=0.1, duration_s=30, max_failovers=1, on_action=collect
            )
        )
        assert acted[0]["outcome"] == "split_brain_fenced"
        assert acted[0]["new_primary"] == new
        assert [f["node"] for f in acted[0]["fenced"]] == [old]
        assert lab.postmaster_pid(old) is None
        writer.wait_ack_after(time.monotonic(), port=lab.nodes[new].port)
        assert [a for a in writer.acks() if a.mono > back and a.port == lab.nodes[old].port] == []
        assert "failover.split_brain" in audit_actions()
        assert rejoin(old)["method"] in ("rewind", "basebackup")
        assert_healthy(lab, new)
    finally:
        writer.stop()
    assert writer.lost_ids(lab.nodes[new].dsn) == []


def test_switchover_and_failback_lose_nothing(lab: PgLab, env: dict[str, str]) -> None:
    from tasks.failover import rejoin as rj

    old = primary(lab)
    target = next(n for n in lab.nodes if n != old)

    async def switch(ctx: Any, to: str) -> dict[str, Any]:
        return await rj.switchover(ctx, to)

    writer = lab.writer("switch")
    try:
        for to, back in ((target, old), (old, target)):
            writer.wait_ack_after(time.monotonic())
            out = with_ctx(functools.partial(switch, to=to))
            assert out["outcome"] == "switched_over"
            assert out["new_primary"] == to
            assert out["rejoin"]["streaming"] is True
            writer.wait_ack_after(time.monotonic(), port=lab.nodes[to].port)
            assert_healthy(lab, to)
            assert lab.status()[back].role is Role.REPLICA
    finally:
        writer.stop()
    assert writer.lost_ids(lab.nodes[old].dsn) == []


def test_started_twice_for_one_failure_one_acts(lab: PgLab, env: dict[str, str]) -> None:
    old = primary(lab)
    lab.kill9(old)
    procs = [start_failover(env) for _ in range(2)]
    outcomes = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        steps = {s["id"]: s for s in json.loads(out)["steps"]}
        outcomes.append(steps["failover"]["output"]["outcome"])
    assert sorted(outcomes) == ["failed_over", "healthy"]
    new = primary(lab)
    rejoin(old)
    assert_healthy(lab, new)


def test_unreachable_old_primary_fence_unconfirmed_routing_moves(
    lab: PgLab, home: Home, env: dict[str, str]
) -> None:
    from tasks.failover import failover as fo

    old = primary(lab)
    inventory = home.runbooks.parent / "inventory.yaml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "hosts": {
                    "here": {"connection": "local"},
                    "gone": {"address": "127.0.0.1", "port": free_port()},
                }
            }
        )
    )
    config = lab.cluster_config("lab")
    config["clusters"]["lab"]["nodes"][old]["host"] = "gone"
    config["clusters"]["lab"]["router"]["dsn"] = lab.router_dsn
    Path(env["KTLO_CLUSTERS"]).write_text(yaml.safe_dump(config, sort_keys=False))
    writer = lab.writer("unreachable")
    try:
        t = lab.kill9(old)
        out = with_ctx(lambda ctx: fo.failover(ctx, observed_at=t))
        assert out["outcome"] == "failed_over", out
        (fence,) = out["fenced"]
        assert fence["node"] == old
        assert fence["confirmed"] is False
        assert fence["how"] == "unconfirmed"
        assert fence["router"] == "disabled"
        new = out["new_primary"]
        writer.wait_ack_after(t, port=lab.nodes[new].port)
        assert lab.router is not None
        assert lab.router.states()[old] == "MAINT"
        assert "failover.fence_unconfirmed" in audit_actions()
    finally:
        writer.stop()
    assert writer.lost_ids(lab.nodes[new].dsn) == []
    # The cluster's fence command confirms a fence the host could not: it is told the node.
    from tasks.failover import ops

    mark = home.path / "fenced-by-command"
    command = ["sh", "-c", f"echo '{{node}} {{host}}' > {mark}"]
    write_config(lab, home, fence_command={"command": command, "host": "here"})
    config = yaml.safe_load(Path(env["KTLO_CLUSTERS"]).read_text())
    config["clusters"]["lab"]["nodes"][old]["host"] = "gone"
    Path(env["KTLO_CLUSTERS"]).write_text(yaml.safe_dump(config, sort_keys=False))
    fenced = with_ctx(lambda ctx: ops.fence(ctx, old))
    assert fenced["confirmed"] is True
    assert fenced["how"] == "fence command succeeded"
    assert mark.read_text().strip() == f"{old} gone"
    inventory.unlink()
    write_config(lab, home)
    rejoin(old)
    assert_healthy(lab, new)


def test_lost_synchronous_standby_degrades_after_a_while_then_recovers(
    lab: PgLab, home: Home, env: dict[str, str]
) -> None:
    from tasks.failover import watch

    p = primary(lab)
    write_config(lab, home, degrade_after_s=1)
    replicas = [n for n in lab.nodes if n != p]
    for r in replicas:  # both standbys gone: every commit would wait (strict)
        lab.sql(r, "ALTER SYSTEM SET primary_conninfo = ''")
        lab.sql(r, "SELECT pg_reload_conf()")
    writer = lab.writer("degrade")
    try:
        with_ctx(lambda ctx: watch.watch(ctx, interval_s=0.1, duration_s=3))
        assert lab.sql(p, "SHOW synchronous_standby_names") == [("",)]
        writer.wait_ack_after(time.monotonic(), port=lab.nodes[p].port)
        assert "failover.synchronous_degraded" in audit_actions()
        for r in replicas:
            lab.follow(r, p)
        lab.wait_streaming(p, len(replicas))
        with_ctx(lambda ctx: watch.watch(ctx, interval_s=0.1, duration_s=0.5))
        (names,) = lab.sql(p, "SHOW synchronous_standby_names")[0]
        assert names.startswith("ANY 1 (")
    finally:
        writer.stop()
    assert writer.lost_ids(lab.nodes[p].dsn) == []
    assert_healthy(lab, p)


def test_lagging_async_replica_is_not_promoted_without_approval(
    lab: PgLab, home: Home, env: dict[str, str]
) -> None:
    old = primary(lab)
    write_config(lab, home, synchronous=False, max_lag_bytes=1024)
    env = {**env}
    lab.sql(old, "ALTER SYSTEM SET synchronous_standby_names = ''")
    lab.sql(old, "SELECT pg_reload_conf()")
    replicas = [n for n in lab.nodes if n != old]
    for r in replicas:  # cut off: their WAL receivers stop
        lab.sql(r, "ALTER SYSTEM SET primary_conninfo = ''")
        lab.sql(r, "SELECT pg_reload_conf()")
    writer = lab.writer("lagging")
    try:
        writer.wait_ack_after(time.monotonic())
        time.sleep(0.5)
        lab.sql(
            old,
            "INSERT INTO lab_writes (writer, id) SELECT 'bulk', g FROM generate_series(1, 2000) g",
        )
        assert cli("failover", "status", "--json", env=env).returncode == 0  # the reference LSN
        lab.kill9(old)
    finally:
        writer.stop()
    proc = start_failover(env)
    from ktlo.engine import approvals

    deadline = time.monotonic() + 90
    while not approvals.pending() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
    (pending,) = approvals.pending()
    assert "bytes of WAL written on the old primary are not on it" in pending.message
    assert lab.primaries() == []  # nothing promoted while waiting
    ok = cli("approve", pending.flow_run_id, "--as", "oncall", "-m", "accept the loss", env=env)
    assert ok.returncode == 0, ok.stderr
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    steps = {s["id"]: s for s in json.loads(out)["steps"]}
    first = steps["failover"]["output"]
    assert first["outcome"] == "refused"
    assert first["bytes_at_risk"] > 1024
    assert str(first["bytes_at_risk"]) in pending.message
    second = steps["failover-approved"]["output"]
    assert second["outcome"] == "failed_over"
    new = second["new_primary"]
    assert writer.lost_ids(lab.nodes[new].dsn) != []  # the loss the approval accepted
    assert "failover.refused" in audit_actions()
    rejoin(old)
    # back to synchronous for anything after this test
    write_config(lab, home)
    lab.configure_sync(True)
    lab.sql(
        new,
        f"ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 ({', '.join(n for n in lab.nodes if n != new)})'",
    )
    lab.sql(new, "SELECT pg_reload_conf()")
    assert_healthy(lab, new)
