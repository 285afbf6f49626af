"""The SSH fleet lab works with plain OpenSSH: what the patch tests and benchmarks rely on."""

from __future__ import annotations

import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from tests.labs import fleet_apt, fleet_pip
from tests.labs.fleet import Fleet, LabUnavailable
from tests.labs.fleet_host import lab_pids
from tests.labs.fleet_sys import alive, tagged

INST = re.compile(r"^Inst (\S+) \[(\S+)\] \((\S+) ([^:]+):")


def dist_upgrade(fleet: Fleet, name: str) -> dict[str, tuple[str, str, str]]:
    """name -> (installed, candidate, release label) from `apt-get -s dist-upgrade` over SSH."""
    done = fleet.ssh(name, "apt-get -s dist-upgrade")
    assert done.returncode == 0, done.stderr
    found = (INST.match(line) for line in done.stdout.splitlines())
    return {m[1]: (m[2], m[3], m[4]) for m in found if m}


def test_every_host_answers_over_ssh_with_strict_host_keys(fleet: Fleet) -> None:
    def probe(name: str) -> tuple[str, int, str]:
        done = fleet.ssh(name, 'echo "$KTLO_LAB"; id -un; echo "$APT_CONFIG"')
        return name, done.returncode, done.stdout + done.stderr

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(probe, fleet.hosts))
    assert len(results) == fleet.count >= 20
    for name, code, out in results:
        assert code == 0, out
        assert out.split() == [
            f"{fleet.lab_id}/{name}",
            fleet.user.name,
            str(fleet[name].apt_config),
        ]
    lines = fleet.known_hosts.read_text().splitlines()
    assert lines == [f"[127.0.0.1]:{h.port} {h.host_key}" for h in fleet.hosts.values()]
    assert all(line.split()[1] == "ssh-ed25519" for line in lines)


def test_dist_upgrade_preview_lists_the_updates_and_marks_security(fleet: Fleet) -> None:
    for name in ("lab-01", "lab-20"):
        plan = dist_upgrade(fleet, name)
        assert {pkg: new for pkg, (_, new, _) in plan.items()} == fleet_apt.UPGRADES
        assert all(old == fleet_apt.INSTALLED[pkg] for pkg, (old, _, _) in plan.items())
        security = {pkg for pkg, (_, _, label) in plan.items() if label == "Debian-Security"}
        assert security == fleet_apt.SECURITY
    # Without the host's env, apt reads this machine's own database (which has no lab packages).
    bare = fleet.ssh("lab-01", "apt-get -s install lab-app=1.1", env=False)
    assert bare.returncode == 100
    assert "Unable to locate package lab-app" in bare.stderr


def test_install_and_downgrade_change_only_that_hosts_root(fleet: Fleet) -> None:
    status = fleet["lab-02"].dpkg_status.read_bytes()
    done = fleet.ssh("lab-01", "apt-get install -y lab-app=1.1 lab-ssl=1.0.1")
    assert done.returncode == 0, done.stderr
    assert fleet.installed("lab-01") | {} == fleet_apt.INSTALLED | {
        "lab-app": "1.1",
        "lab-ssl": "1.0.1",
    }
    query = fleet.ssh(
        "lab-01", f"dpkg-query --admindir={fleet['lab-01'].root}/var/lib/dpkg -W lab-app"
    )
    assert query.stdout.split() == ["lab-app", "1.1"]
    assert fleet["lab-02"].dpkg_status.read_bytes() == status
    down = fleet.ssh("lab-01", "apt-get install -y --allow-downgrades lab-app=1.0")
    assert down.returncode == 0, down.stderr
    assert fleet.installed("lab-01")["lab-app"] == "1.0"
    fleet.reset("lab-01")
    assert fleet.installed("lab-01") == fleet_apt.INSTALLED


def test_a_wrong_known_hosts_entry_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{fleet['lab-01'].port} {fleet['lab-02'].host_key}\n")
    marker = fleet["lab-01"].dir / "ran"
    done = fleet.ssh("lab-01", f"touch {marker}", known_hosts=wrong)
    assert done.returncode == 255
    assert "Host key verification failed" in done.stderr
    assert not marker.exists()
    unknown = tmp_path / "empty"
    unknown.write_text("")
    assert fleet.ssh("lab-01", "true", known_hosts=unknown).returncode == 255


def test_inventory_follows_the_spec_format(fleet: Fleet) -> None:
    data = yaml.safe_load(fleet.inventory.read_text())
    assert data["defaults"] == {
        "user": fleet.user.name,
        "port": 22,
        "known_hosts": str(fleet.known_hosts),
        "key_file": str(fleet.client_key),
    }
    assert len(data["hosts"]) == fleet.count
    host = data["hosts"]["lab-03"]
    assert host["address"] == "127.0.0.1"
    assert host["port"] == fleet["lab-03"].port
    assert host["env"]["APT_CONFIG"] == str(fleet["lab-03"].apt_config)
    assert host["groups"] == ["lab", "web"]
    assert data["hosts"]["lab-20"]["groups"] == ["lab", "db"]


def test_a_held_dpkg_lock_makes_apt_wait_then_fail(fleet: Fleet) -> None:
    with fleet.hold_lock("lab-04") as holder:
        started = time.monotonic()
        done = fleet.ssh("lab-04", "apt-get -o DPkg::Lock::Timeout=1 install -y lab-app=1.1")
        waited = time.monotonic() - started
    assert done.returncode == 100
    assert f"held by process {holder}" in done.stdout  # apt's "Waiting for cache lock" lines
    assert "Unable to acquire the dpkg frontend lock" in done.stderr
    assert 1.0 <= waited < 10
    assert fleet.installed("lab-04")["lab-app"] == "1.0"
    assert not alive(holder)


def test_failing_and_prompting_postinst(fleet: Fleet) -> None:
    fleet.dpkg_install("lab-05", "lab-broken", "1.0")
    done = fleet.ssh("lab-05", "apt-get install -y lab-broken=1.1")
    assert done.returncode == 100
    assert "injected failure" in done.stdout + done.stderr
    assert fleet.packages("lab-05")["lab-broken"] == ("1.1", "iF")  # half-configured
    fleet.dpkg_install("lab-06", "lab-prompt", "1.0")
    with pytest.raises(subprocess.TimeoutExpired):
        fleet.ssh("lab-06", "apt-get install -y lab-prompt=1.1", timeout=3)
    assert tagged(fleet["lab-06"].sshd.tag, exact=True), "the hung postinst still runs"
    fleet.reset("lab-06")
    assert not tagged(fleet["lab-06"].sshd.tag, exact=True)


def test_reboot_changes_the_boot_id_and_clears_reboot_required(fleet: Fleet) -> None:
    host = fleet["lab-07"]
    fleet.dpkg_install("lab-07", "lab-kernel", "1.0")
    assert fleet.ssh("lab-07", "apt-get install -y lab-kernel=1.1").returncode == 0
    assert host.reboot_required.read_text().startswith("*** System restart required")
    before = fleet.ssh("lab-07", "lab-boot-id").stdout.strip()
    assert fleet.ssh("lab-07", "reboot").returncode == 0
    deadline = time.monotonic() + 15
    seen_down = False
    while time.monotonic() < deadline:
        done = fleet.ssh("lab-07", "lab-boot-id", timeout=10)
        seen_down |= done.returncode == 255
        if done.returncode == 0 and done.stdout.strip() != before:
            break
        time.sleep(0.1)
    assert seen_down
    assert done.stdout.strip() == host.boot_id() != before
    assert host.reboots == 1
    assert not host.reboot_required.exists()


def test_kill_and_restart_a_host(fleet: Fleet) -> None:
    first = fleet["lab-08"].sshd.proc
    fleet.kill("lab-08")
    assert first is not None
    assert not alive(first.pid)
    assert "Connection refused" in fleet.ssh("lab-08", "true").stderr
    assert fleet.ssh("lab-09", "true").returncode == 0
    fleet.restart("lab-08")
    assert fleet.ssh("lab-08", "true").returncode == 0


def test_pip_outdated_and_pip_audit_against_the_lab_osv(fleet: Fleet) -> None:
    venv = fleet["lab-10"].venv
    outdated = fleet.ssh("lab-10", f"{venv}/bin/pip list --outdated --format=json")
    assert outdated.returncode == 0, outdated.stderr
    latest = {row["name"]: row["latest_version"] for row in json.loads(outdated.stdout)}
    assert latest == fleet_pip.PIP_OUTDATED
    audit = fleet.ssh("lab-10", f"{venv}/bin/pip-audit -f json -s osv --osv-url {fleet.osv_url}")
    assert audit.returncode == 1, audit.stderr  # 1: vulnerabilities found
    vulns = {d["name"]: d["vulns"] for d in json.loads(audit.stdout)["dependencies"]}
    assert [v["fix_versions"] for v in vulns["lab-httpkit"]] == [["1.1"]]
    assert fleet_pip.VULN_ID in vulns["lab-httpkit"][0]["aliases"] + [vulns["lab-httpkit"][0]["id"]]
    assert vulns["lab-yamlish"] == []
    assert fleet.osv is not None
    with httpx.Client(base_url=fleet.osv.url, trust_env=False) as osv:
        pkg = {"name": "lab-httpkit", "ecosystem": "PyPI"}
        queries = [{"package": pkg, "version": "1.0"}, {"package": pkg, "version": "1.1"}]
        batch = osv.post("/v1/querybatch", json={"queries": queries}).json()
        assert [[v["id"] for v in r["vulns"]] for r in batch["results"]] == [
            [fleet_pip.VULN_ID],
            [],
        ]
        assert osv.get(f"/v1/vulns/{fleet_pip.VULN_ID}").json()["aliases"] == ["CVE-2026-0001"]
        assert osv.get("/v1/vulns/NOPE").status_code == 404
    upgrade = fleet.ssh("lab-10", f"{venv}/bin/pip install lab-httpkit==1.1")
    assert upgrade.returncode == 0, upgrade.stderr
    assert fleet.pip_installed("lab-10")["lab-httpkit"] == "1.1"
    assert fleet.pip_installed("lab-11")["lab-httpkit"] == "1.0"


def test_stop_ends_every_lab_process() -> None:
    from tests.conftest import unavailable

    try:
        lab = Fleet(3).build()
    except LabUnavailable as exc:
        unavailable(str(exc))
    lab.start()
    try:
        # A session that outlives its client, and a connection left open.
        client = subprocess.Popen([*lab.ssh_argv("lab-01"), "sleep 300"], stdin=subprocess.DEVNULL)
        idle = subprocess.Popen([*lab.ssh_argv("lab-02"), "sleep 300"], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while len(tagged(f"{lab.lab_id}/")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        client.kill()
        running = lab_pids(lab.lab_id, list(lab.hosts.values()), lab.user.uid)
        before = {*lab.pids(), *(pid for pids in running.values() for pid in pids)}
        assert len(before) >= 3 + 2
    finally:
        stopped = lab.stop()
    idle.wait(timeout=10)
    assert before <= set(stopped)
    assert [pid for pid in before if alive(pid)] == []
    assert not lab.dir.exists()
    assert lab.timings["stop_s"] < 5
