"""The PostgreSQL failover lab (tests/labs/pgcluster.py) is sound enough to judge failover by.

Every later failover test trusts it: HAProxy must route writes only to the primary, the
replicas must really stream with the configured sync mode, a kill must be seen by HAProxy,
a promoted replica must take routed writes again, the writer's acknowledgements must be
checkable against a node, and nothing the lab started may outlive it.
The tests run in file order on one lab (the kill changes the cluster for the tests after it).
Deadlines here are generous waits, not timing assertions: the measured times are printed
(`-s`) and belong in bench/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml

from tests.conftest import unavailable
from tests.labs import procs
from tests.labs.pgcluster import PgLab, Role, build, lab_unavailable


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgLab]:
    reason = lab_unavailable()
    if reason:
        unavailable(reason)
    lab = build(tmp_path_factory.mktemp("pglab"), nodes=3, synchronous=True)
    print("\nlab build:", {k: round(v, 2) for k, v in lab.timings.items()})
    try:
        yield lab
    finally:
        lab.stop_all()


def test_writes_through_haproxy_reach_the_primary(lab: PgLab, tmp_path: Path) -> None:
    assert lab.router is not None
    assert lab.router.states() == {"n1": "UP", "n2": "DOWN", "n3": "DOWN"}
    for i in range(4):  # new connections each time: roundrobin would show any other node
        with psycopg.connect(lab.router_dsn, autocommit=True, connect_timeout=5) as conn:
            port = conn.execute(
                "INSERT INTO lab_writes (writer, id) VALUES ('direct', %s)"
                " RETURNING inet_server_port()",
                (i,),
            ).fetchone()
            assert port == (lab.nodes["n1"].port,)
    # The admin socket takes the runtime commands router steps will send.
    assert lab.router.admin("disable server pg/n2").strip() == ""
    lab.router.wait_state("n2", "MAINT")
    lab.router.admin("enable server pg/n2")
    lab.router.wait_state("n2", "DOWN")  # back under its health check: a replica stays down
    lab.router.admin("set server pg/n1 state drain")
    lab.router.wait_state("n1", "DRAIN")
    lab.router.admin("set server pg/n1 state ready")
    lab.router.wait_state("n1", "UP")
    status = lab.status()
    assert [status[n].role for n in ("n1", "n2", "n3")] == [
        Role.PRIMARY,
        Role.REPLICA,
        Role.REPLICA,
    ]
    config = yaml.safe_load(lab.write_clusters_yaml(tmp_path / "clusters.yaml").read_text())
    cluster = config["clusters"]["lab"]
    assert cluster["router"] == {
        "kind": "haproxy",
        "socket": str(lab.router.socket),
        "backend": "pg",
    }
    n2 = cluster["nodes"]["n2"]
    assert n2["dsn"] == lab.nodes["n2"].dsn
    assert n2["host"] == "here"
    assert n2["run_as"] == "postgres"
    assert Path(n2["data_dir"], "PG_VERSION").exists()
    # Per-node settings live outside the data directory (pg_rewind copies the one inside).
    assert (Path(n2["data_dir"]) / "postgresql.conf").read_text() == "include '../node.conf'\n"


def test_replicas_stream_in_the_configured_sync_mode(lab: PgLab) -> None:
    rows = lab.replication("n1")
    assert [(r["application_name"], r["state"], r["sync_state"]) for r in rows] == [
        ("n2", "streaming", "quorum"),
        ("n3", "streaming", "quorum"),
    ]  # ANY 1 (n2, n3)
    lab.configure_sync("FIRST")
    assert lab.sql("n1", "SHOW synchronous_standby_names") == [("FIRST 1 (n2, n3)",)]
    procs.wait_until(
        lambda: [r["sync_state"] for r in lab.replication("n1")] == ["sync", "potential"],
        10,
        "n2 sync, n3 potential",
    )


def test_kill9_is_seen_by_haproxy_and_a_promoted_replica_takes_writes(lab: PgLab) -> None:
    assert lab.router is not None
    writer = lab.writer("w1")
    start = time.monotonic()
    writer.wait_ack_after(start)
    killed = lab.kill9("n1")
    down = lab.router.wait_state("n1", "DOWN", timeout=5)
    # SPEC §13: clear sync on the standby first; promote() reloads while it waits.
    lab.sql("n2", "ALTER SYSTEM SET synchronous_standby_names = ''")
    lab.sql("n2", "SELECT pg_reload_conf()")
    promote_s = lab.promote("n2")
    up = lab.router.wait_state("n2", "UP", timeout=5)
    first = writer.wait_ack_after(killed, port=lab.nodes["n2"].port, timeout=10)
    writer.stop()
    print(
        f"\nkill -> n1 DOWN {down - killed:.2f} s, promote {promote_s:.2f} s,"
        f" kill -> n2 UP {up - killed:.2f} s, kill -> first ack {first.mono - killed:.2f} s"
    )
    acked = writer.acks()
    assert any(a.mono < killed for a in acked)
    # FIRST 1 (n2, n3): n2 flushed every acknowledged commit, so none may be missing there.
    assert writer.lost_ids(lab.nodes["n2"].dsn) == []
    assert lab.status()["n1"].role is Role.DOWN
    assert lab.router.up_servers() == ["n2"]


def test_stop_and_start_a_node_then_stop_all_leaves_no_process(lab: PgLab) -> None:
    lab.stop("n3")
    assert lab.postmaster_pid("n3") is None
    assert lab.status()["n3"].role is Role.DOWN
    lab.start("n3")
    assert lab.status()["n3"].role is Role.REPLICA
    pids = lab.pids()
    assert len(pids) > 10  # postmasters, their children, HAProxy, health, the writer
    lab.stop_all()
    assert [p for p in pids if procs.alive(p)] == []
    assert lab.leftovers() == []
    assert not lab.rundir.exists()
    assert not lab.data_root.exists()
