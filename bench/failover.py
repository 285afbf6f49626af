"""Failover RTO (SPEC §9): kill -9 of the PostgreSQL primary → first write acknowledged through
HAProxy, detection included, ktlo vs Patroni with default timers, side by side in one run.

ktlo: the lab of tests/labs/pgcluster.py (3 nodes, synchronous, HAProxy on /primary) watched by
`ktlo run pg-watch` (every node probed every 0.2 s, 2 misses = down, failover in the same flow
run); each trial kills the primary's postmaster, measures until the writer's first
acknowledged write on another node, then rejoins the old primary (pg_rewind) for the next.
Patroni: tests/labs/patroni.py (3 nodes, etcd, ttl 30 / loop_wait 10, synchronous_mode, the
same HAProxy front checking Patroni's /primary); each trial kills the node (Patroni and its
postmaster: killing only the postmaster makes Patroni restart it in place, no failover), then
restarts that node's Patroni and waits for the cluster to be whole again.
Both: a writer committing a numbered row every 10 ms through HAProxy; every acknowledged id
must be on the final primary.

    python -m bench.failover          # KTLO_BENCH_ROUNDS=5 trials each (default)

Installs `patroni etcd-server etcd-client` with apt when missing (the Patroni side only).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Result, child_env, ratio_line, rounds, session

REPO = Path(__file__).resolve().parents[1]
KTLO = str(Path(sys.executable).parent / "ktlo")
TARGET_S = 10.0
TARGET_RATIO = 1 / 3  # ktlo at least 3x faster
PATRONI_GIVE_UP_S = 120.0  # a trial without a failover by then is counted apart, not timed


def _ack_elsewhere(writer: Any, t: float, old_port: int, timeout: float) -> Any:
    """The first write acknowledged after `t` by a node other than the killed one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ack = next((a for a in writer.acks() if a.mono > t and a.port != old_port), None)
        if ack is not None:
            return ack
        time.sleep(0.01)
    raise TimeoutError(f"no write acknowledged by another node {timeout:g}s after the kill")


def ktlo_trials(tmp: Path, home: Path, n: int) -> dict[str, Any]:
    import asyncio

    import yaml

    from ktlo.hosts.runner import HostRunner
    from ktlo.settings import reload_settings
    from tasks.failover import rejoin
    from tasks.failover.model import get_cluster
    from tasks.failover.ops import Ctx
    from tests.labs import pgcluster

    lab = pgcluster.build(tmp / "ktlo", nodes=3, synchronous=True)
    clusters = tmp / "clusters.yaml"
    config = lab.cluster_config("lab")
    config["clusters"]["lab"]["router"]["dsn"] = lab.router_dsn
    clusters.write_text(yaml.safe_dump(config, sort_keys=False))
    os.environ["KTLO_CLUSTERS"] = str(clusters)
    reload_settings()
    env = child_env(
        KTLO_HOME=str(home), KTLO_RUNBOOKS=str(REPO / "runbooks"), KTLO_CLUSTERS=str(clusters)
    )
    log = (tmp / "watch.log").open("wb")
    watch = subprocess.Popen(
        [KTLO, "run", "pg-watch", "-p", "cluster=lab", "-p", f"max_failovers={n}", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=REPO,
    )
    rtos: list[float] = []
    try:
        from tasks.failover import store

        deadline = time.monotonic() + 120
        while store.last_primary("lab") is None:  # the watch is probing
            if watch.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"pg-watch did not start: {(tmp / 'watch.log').read_text()[-2000:]}"
                )
            time.sleep(0.2)
        writer = lab.writer("bench")
        for i in range(n):
            (old,) = lab.primaries()
            writer.wait_ack_after(time.monotonic())
            time.sleep(0.5)
            t = lab.kill9(old)
            ack = _ack_elsewhere(writer, t, lab.nodes[old].port, 60)
            rtos.append(ack.mono - t)
            print(f"  ktlo trial {i + 1}: killed {old}, first ack {rtos[-1]:.2f} s", flush=True)

            async def back(node: str = old) -> dict[str, Any]:
                async with HostRunner() as runner:
                    return await rejoin.rejoin(Ctx("lab", get_cluster("lab"), runner), node)

            rejoined = asyncio.run(back())
            print(f"    rejoin {rejoined['method']} {rejoined['seconds']:.2f} s", flush=True)
        out, _ = watch.communicate(timeout=120)
        writer.stop()
        final = lab.primaries()[0]
        lost = writer.lost_ids(lab.nodes[final].dsn)
        acks = len(writer.acks())
    finally:
        if watch.poll() is None:
            watch.terminate()
            watch.wait(30)
        log.close()
        lab.stop_all()
    failovers = json.loads(out)["steps"][0]["output"]["failovers"]
    decided_to_ack = [
        _event(f, "first_write_acknowledged") - _event(f, "decided") for f in failovers
    ]
    return {"rto": rtos, "lost": len(lost), "acks": acks, "decided_to_ack": decided_to_ack}


def _event(failover: dict[str, Any], name: str) -> float:
    return float(next(e["t_s"] for e in failover["timeline"] if e["event"] == name))


def ensure_patroni() -> str | None:
    from tests.labs import patroni

    if patroni.unavailable() and shutil.which("apt-get"):
        print("installing patroni etcd-server etcd-client with apt ...", flush=True)
        subprocess.run(
            [
                "apt-get",
                "install",
                "-y",
                "--no-install-recommends",
                "patroni",
                "etcd-server",
                "etcd-client",
            ],
            check=False,
            capture_output=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    return patroni.unavailable()


def patroni_trials(tmp: Path, n: int) -> dict[str, Any]:
    from tests.labs import patroni

    lab = patroni.build(tmp / "patroni", nodes=3, synchronous=True)
    rtos: list[float] = []
    stuck = 0  # trials in which no other node took a write within PATRONI_GIVE_UP_S
    try:
        writer = lab.writer("bench")
        for i in range(n):
            try:
                old = lab.wait_cluster(timeout=240)
            except TimeoutError:
                print("  patroni: the cluster did not become whole again; trials end", flush=True)
                break
            writer.wait_ack_after(time.monotonic())
            time.sleep(0.5)
            t = lab.kill9_node(old)
            try:
                ack = _ack_elsewhere(writer, t, lab.nodes[old].pg_port, PATRONI_GIVE_UP_S)
            except TimeoutError:
                stuck += 1
                print(
                    f"  patroni trial {i + 1}: killed {old}, NO failover in {PATRONI_GIVE_UP_S:g} s",
                    flush=True,
                )
                lab.start(old)
                continue
            rtos.append(ack.mono - t)
            print(f"  patroni trial {i + 1}: killed {old}, first ack {rtos[-1]:.2f} s", flush=True)
            lab.start(old)
        final = lab.wait_cluster(timeout=240)
        writer.stop()
        lost = writer.lost_ids(lab.nodes[final].dsn)
        acks = len(writer.acks())
    finally:
        lab.stop_all()
    return {"rto": rtos, "lost": len(lost), "acks": acks, "stuck": stuck}


def run() -> Result:
    with session() as s:
        n = max(5, rounds())
        tmp = Path(tempfile.mkdtemp(prefix="ktlo-bench-failover-"))
        print(f"ktlo: {n} kill -9 failovers (pg-watch, 0.2 s x 2 probes) ...", flush=True)
        k = ktlo_trials(tmp, s.home, n)
        data: dict[str, Any] = {
            "ktlo_rto_s": k["rto"],
            "ktlo_median_s": statistics.median(k["rto"]),
            "ktlo_lost": k["lost"],
            "ktlo_decided_to_ack_median_s": statistics.median(k["decided_to_ack"]),
        }
        print(
            f"ktlo: median {data['ktlo_median_s']:.2f} s (target ≤ {TARGET_S:g} s), decision →"
            f" first ack median {data['ktlo_decided_to_ack_median_s']:.2f} s (target ≤ 2 s),"
            f" lost {k['lost']} of {k['acks']} acknowledged writes",
            flush=True,
        )
        why = ensure_patroni()
        if why:
            print(f"Patroni side skipped: {why}", flush=True)
            return Result("failover", f"ktlo median {data['ktlo_median_s']:.2f} s", data)
        print(f"Patroni: {n} node kills (ttl 30, loop_wait 10) ...", flush=True)
        p = patroni_trials(tmp, n)
        data.update(
            patroni_rto_s=p["rto"],
            patroni_median_s=statistics.median(p["rto"]),
            patroni_lost=p["lost"],
        )
        print(
            f"patroni: lost {p['lost']} of {p['acks']} acknowledged writes; {p['stuck']} of {n}"
            f" kills without a failover in {PATRONI_GIVE_UP_S:g} s (not in the median)",
            flush=True,
        )
        data["patroni_stuck"] = p["stuck"]
        if not p["rto"]:
            return Result("failover", "Patroni never failed over", data)
        ratio = ratio_line(
            "failover kill -9 → first acknowledged write",
            "ktlo",
            data["ktlo_median_s"],
            "Patroni",
            data["patroni_median_s"],
            target=TARGET_RATIO,
        )
        data["ratio"] = ratio
        shutil.rmtree(tmp, ignore_errors=True)
        return Result(
            "failover",
            f"ktlo {data['ktlo_median_s']:.2f} s vs Patroni {data['patroni_median_s']:.2f} s",
            data,
        )


if __name__ == "__main__":
    run().emit()
