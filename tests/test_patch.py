"""Patch management on the real 20-host SSH fleet lab: scan, baselines, rollout, failures."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import cli
from tests.labs import fleet_apt
from tests.labs.fleet import Fleet

GATE = [{"type": "command", "name": "lab-health", "command": "lab-health"}]


@pytest.fixture
def patching(fleet: Fleet, run: Any, home: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs patch steps on the lab: `patching(step_type, **with)` -> the run's record."""
    from ktlo.settings import reload_settings

    monkeypatch.setenv("KTLO_INVENTORY", str(fleet.inventory))
    reload_settings()
    count = [0]

    def go(uses: str, **inputs: Any) -> Any:
        count[0] += 1
        name = f"patch-test-{count[0]}"
        inputs.setdefault("hosts", "all")
        if uses == "patch.rollout":
            inputs.setdefault("boot_id_command", "lab-boot-id")
            inputs.setdefault("reboot_poll_s", 0.2)
            inputs.setdefault("command_timeout_s", 30)
        doc = {"name": name, "steps": [{"id": "patch", "uses": uses, "with": inputs}]}
        (home.runbooks / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return run(name)

    return go


def _outcomes(result: Any) -> dict[str, str]:
    return {h["host"]: h["outcome"] for h in result.steps["patch"].output["hosts"]}


def test_scan_changes_nothing_and_finds_the_plan(fleet: Fleet, patching: Any) -> None:
    before = {n: h.dpkg_status.read_bytes() for n, h in fleet.hosts.items()}
    result = patching("patch.scan")
    assert result.status == "succeeded", result.steps["patch"].error
    out = result.steps["patch"].output
    assert {n: h.dpkg_status.read_bytes() for n, h in fleet.hosts.items()} == before
    assert out["states"] == {"Missing": 20}
    one = out["hosts"][0]
    assert sorted(one["approved"]) == sorted(f"{n}={v}" for n, v in fleet_apt.UPGRADES.items())
    assert sorted(one["security"]) == ["lab-ssl=1.0.1", "lab-zlib=1.0.1"]
    assert not one["reboot_required"]
    assert len({h["plan_hash"] for h in out["hosts"]}) == 1
    status = cli("patch", "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)["hosts"]
    assert {r["state"] for r in rows} == {"Missing"}
    assert {(p["name"], p["version"], p["security"]) for p in rows[0]["pending"]} == {
        (n, v, n in fleet_apt.SECURITY) for n, v in fleet_apt.UPGRADES.items()
    }
    plan = cli("patch", "plan", "lab-01")
    assert plan.returncode == 0, plan.stderr
    assert "lab-ssl 1.0 → 1.0.1 security" in plan.stdout


def test_rollout_patches_the_fleet_and_a_rerun_skips(fleet: Fleet, patching: Any) -> None:
    patching("patch.scan")
    result = patching("patch.rollout", batches=[1, 5, "50%"], health=GATE)
    assert result.status == "succeeded", result.steps["patch"].error
    out = result.steps["patch"].output
    assert set(_outcomes(result).values()) == {"patched"}
    assert [len(b["hosts"]) for b in out["batches"]] == [1, 5, 10, 4]
    for name in fleet.hosts:
        assert fleet.installed(name) == {**fleet_apt.INSTALLED, **fleet_apt.UPGRADES}
    again = patching("patch.rollout", batches=[20])
    assert set(_outcomes(again).values()) == {"skipped"}
    states = json.loads(cli("patch", "status", "--json").stdout)["hosts"]
    assert {h["state"] for h in states} == {"Installed"}


def test_an_unchanged_host_is_scanned_and_patched_without_simulating_again(
    fleet: Fleet, patching: Any
) -> None:
    """The scan fingerprints what apt's plan comes from (dpkg's status included). While it
    holds, a rescan takes the last result again, the guarded install does not simulate, nor
    does the rescan after the whole plan went in. Any change to those inputs (here a new
    preferences file) and the scan, or the guard, simulates and compares."""
    hosts = ["lab-09", "lab-10"]
    calls = {n: fleet.hosts[n].dir / "apt-calls" for n in hosts}
    for name in hosts:  # an apt-get that logs its arguments, first in the host's PATH
        wrapper = fleet.hosts[name].bin / "apt-get"
        body = f'#!/bin/sh\necho "$*" >> {calls[name]}\nexec /usr/bin/apt-get "$@"\n'
        done = fleet.run(
            name,
            f"printf %s {shlex.quote(body)} > {wrapper} && chmod 755 {wrapper} && command -v apt-get",
        )
        assert done.stdout.strip() == str(wrapper), done.stderr
    prefs = fleet.hosts["lab-10"].root / "etc/apt/preferences.d/ktlo-test"
    prefs.parent.mkdir(parents=True, exist_ok=True)

    def made(during: Any) -> dict[str, tuple[int, int]]:
        """(simulations, installs) per host while `during` ran."""
        for name, log in calls.items():
            fleet.run(name, f": > {log}")
        during()
        lines = {n: log.read_text().splitlines() for n, log in calls.items()}
        return {
            n: (sum(c.startswith("-s ") for c in ls), sum(" install " in c for c in ls))
            for n, ls in lines.items()
        }

    first = patching("patch.scan", hosts=",".join(hosts))
    prefs.write_text("Package: lab-none\nPin: version *\nPin-Priority: 500\n")
    rescans: list[Any] = []
    assert made(lambda: rescans.append(patching("patch.scan", hosts=",".join(hosts)))) == {
        "lab-09": (0, 0),
        "lab-10": (1, 0),
    }
    (rescan,) = rescans
    plans = [
        {h["host"]: (h["plan_hash"], h["approved"]) for h in r.steps["patch"].output["hosts"]}
        for r in (first, rescan)
    ]
    assert plans[0] == plans[1]
    assert plans[0]["lab-09"][1]  # the same plan, not an empty one

    prefs.write_text("Package: lab-none\nPin: version *\nPin-Priority: 600\n")
    results: list[Any] = []
    assert made(
        lambda: results.append(
            patching("patch.rollout", hosts=",".join(hosts), batches=[2], health=GATE)
        )
    ) == {"lab-09": (0, 1), "lab-10": (1, 1)}
    (result,) = results
    assert result.status == "succeeded", result.steps["patch"].error
    assert _outcomes(result) == {"lab-09": "patched", "lab-10": "patched"}
    for name in hosts:
        assert fleet.installed(name) == {**fleet_apt.INSTALLED, **fleet_apt.UPGRADES}
    again = patching("patch.rollout", hosts=",".join(hosts), batches=[2])
    assert set(_outcomes(again).values()) == {"skipped"}


def test_shipped_rollout_runbook(fleet: Fleet, patching: Any, run: Any) -> None:
    patching("patch.scan", hosts="lab-11,lab-12,lab-13")  # sets KTLO_INVENTORY
    runbook = Path(__file__).resolve().parents[1] / "runbooks" / "patch-rollout.yaml"
    result = run(
        runbook,
        hosts="lab-11,lab-12,lab-13",
        batches=[1, "50%"],
        max_failed="1",
        health=GATE,
        reboot="never",
        approval=False,
    )
    assert result.status == "succeeded", {k: s.error for k, s in result.steps.items()}
    canary = _outcomes_of(result, "canary")
    rest = _outcomes_of(result, "rollout")
    assert canary == {"lab-11": "patched"}
    assert rest == {"lab-11": "skipped", "lab-12": "patched", "lab-13": "patched"}


def _outcomes_of(result: Any, step: str) -> dict[str, str]:
    return {h["host"]: h["outcome"] for h in result.steps[step].output["hosts"]}


def test_failures_are_contained_and_an_all_failed_batch_does_not_stop_the_run(
    fleet: Fleet, patching: Any
) -> None:
    """Batch 2 = five hosts, each failing differently; budget 5: batch 3 still runs."""
    fleet.dpkg_install("lab-02", "lab-broken", "1.0")  # its 1.1 postinst exits 1
    fleet.dpkg_install("lab-04", "lab-prompt", "1.0")  # its 1.1 postinst waits for an answer
    hosts = "lab-01,lab-02,lab-03,lab-04,lab-05,lab-06,lab-07,lab-08"
    assert patching("patch.scan", hosts=hosts).status == "succeeded"
    fleet.set_health("lab-03", False)  # the gate fails after patching
    fleet.dpkg_install("lab-06", "lab-app", "1.1")  # out of band: the plan changed
    apt = {"kind": "apt", "lock_timeout_s": 2}
    with fleet.hold_lock("lab-05"):
        result = patching(
            "patch.rollout",
            hosts=hosts,
            providers=[apt],
            batches=[1, 5],
            max_failed=5,
            health=GATE,
            install_timeout_s=8,
        )
    assert result.status == "succeeded", result.steps["patch"].error
    out = result.steps["patch"].output
    got = _outcomes(result)
    errors = {h["host"]: h["error"] or "" for h in out["hosts"]}
    assert got["lab-01"] == "patched"
    assert got["lab-02"] == "rolled_back", errors["lab-02"]
    assert "install failed" in errors["lab-02"]
    assert got["lab-03"] == "rolled_back", errors["lab-03"]
    assert "health gate failed" in errors["lab-03"]
    assert got["lab-04"] in ("rolled_back", "failed"), errors["lab-04"]
    assert "timed out after 8s" in errors["lab-04"]
    assert got["lab-05"] in ("rolled_back", "failed"), errors["lab-05"]
    assert "lock" in errors["lab-05"].lower()
    assert got["lab-06"] == "failed"
    assert errors["lab-06"].startswith("refused: the pending updates changed")
    assert got["lab-07"] == got["lab-08"] == "patched"
    assert out["failed"] == 5
    assert not out["budget_spent"]
    # rollback verified with dpkg-query: exactly the versions before
    assert fleet.installed("lab-03") == fleet_apt.INSTALLED
    assert fleet.installed("lab-02") == {**fleet_apt.INSTALLED, "lab-broken": "1.0"}
    # the refused host was not touched beyond the operator's own change
    assert fleet.installed("lab-06") == {**fleet_apt.INSTALLED, "lab-app": "1.1"}
    assert fleet.installed("lab-05") == fleet_apt.INSTALLED
    # every host action is in the audit trail
    from ktlo.store import audit

    acts = {(e.action, e.subject) for e in audit.events(run_id=str(result.run.id), limit=500)}
    assert ("patch.refused", "lab-06") in acts
    assert ("patch.rollback", "lab-03") in acts
    assert {("patch.outcome", f"lab-0{i}") for i in range(1, 9)} <= acts
    assert ("patch.install", "lab-07") in acts


def test_budget_exhaustion_stops_new_hosts(fleet: Fleet, patching: Any) -> None:
    patching("patch.scan")
    for name in ("lab-02", "lab-03", "lab-04"):
        fleet.set_health(name, False)
    # reboot: never -> the gate runs in the install's own exec (its failure still rolls back)
    result = patching(
        "patch.rollout", batches=[1, 5, "50%"], max_failed=2, health=GATE, reboot="never"
    )
    assert result.status == "failed"
    assert "failure budget spent" in (result.steps["patch"].error or "")
    untouched = [n for n in fleet.hosts if fleet.installed(n) == fleet_apt.INSTALLED]
    changed = sorted(set(fleet.hosts) - set(untouched))
    # canary + batch 2 (5 hosts) were touched; 3 rolled back, none of batches 3-4 started
    assert changed == ["lab-01", "lab-05", "lab-06"]
    assert len(untouched) == 17
    error = result.steps["patch"].error or ""
    for name in ("lab-02", "lab-03", "lab-04"):
        assert f"{name} rolled_back: health gate failed: health check 'lab-health': exit 1" in error


def test_sshd_killed_mid_rollout_counts_as_failed(fleet: Fleet, patching: Any) -> None:
    import threading

    hosts = "lab-01,lab-02,lab-03"
    patching("patch.scan", hosts=hosts)
    stop = threading.Event()

    def killer() -> None:  # once the canary is patched, lab-03 dies before its batch
        while not stop.wait(0.05):
            if fleet.installed("lab-01").get("lab-app") == "1.1":
                fleet.kill("lab-03")
                return

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        result = patching("patch.rollout", hosts=hosts, batches=[1, 2], max_failed=1, soak_s=1)
    finally:
        stop.set()
        thread.join()
    got = _outcomes(result)
    assert result.status == "succeeded", result.steps["patch"].error
    assert (got["lab-01"], got["lab-02"], got["lab-03"]) == ("patched", "patched", "failed")
    err = next(h["error"] for h in result.steps["patch"].output["hosts"] if h["host"] == "lab-03")
    assert err.startswith("unreachable: lab-03")


def test_reboot_if_needed_is_confirmed_by_a_new_boot_id(fleet: Fleet, patching: Any) -> None:
    fleet.dpkg_install("lab-09", "lab-kernel", "1.0")
    boot = fleet["lab-09"].boot_id()
    patching("patch.scan", hosts="lab-09,lab-10")
    result = patching("patch.rollout", hosts="lab-09,lab-10", batches=[2], health=GATE)
    assert result.status == "succeeded", result.steps["patch"].error
    rows = {h["host"]: h for h in result.steps["patch"].output["hosts"]}
    assert rows["lab-09"]["rebooted"]
    assert not rows["lab-10"]["rebooted"]
    assert fleet["lab-09"].boot_id() != boot
    assert fleet["lab-09"].reboots == 1


def test_pip_and_script_providers(fleet: Fleet, patching: Any) -> None:
    from tests.labs import fleet_pip

    pip = {
        "kind": "pip",
        "venv": "{vars.venv}",
        "audit_args": ["-s", "osv", "--osv-url", fleet.osv_url],
    }
    script = {
        "kind": "script",
        "name": "firmware",
        "scan": """echo '{"installed": {"bios": "1.0"}, "pending": [{"name": "bios", "version": "1.2", "security": true}]}'""",
        "install": 'echo "$KTLO_PATCH_PLAN" > "$HOME/firmware-plan"',
        "rollback": "true",
    }
    result = patching("patch.scan", hosts="lab-14", providers=[pip, script])
    assert result.status == "succeeded", result.steps["patch"].error
    row = result.steps["patch"].output["hosts"][0]
    assert row["error"] is None
    assert sorted(row["approved"]) == sorted(
        [f"{n}={v}" for n, v in fleet_pip.PIP_OUTDATED.items()] + ["bios=1.2"]
    )
    assert sorted(row["security"]) == ["bios=1.2", "lab-httpkit=1.1"]
    security = cli("patch", "plan", "lab-14", "--json", "--security")
    packages = json.loads(security.stdout)["hosts"][0]["packages"]
    httpkit = next(p for p in packages if p["name"] == "lab-httpkit")
    assert fleet_pip.VULN_ID in httpkit["advisories"]
    yamlish = next(p for p in packages if p["name"] == "lab-yamlish")
    assert (yamlish["install"], yamlish["why_not"]) == (False, "not a security update")
    rolled = patching(
        "patch.rollout",
        hosts="lab-14",
        providers=[pip],
        baseline={"classes": "security"},
        batches=[1],
        reboot="never",
    )
    assert _outcomes(rolled) == {"lab-14": "patched"}
    assert fleet.pip_installed("lab-14")["lab-httpkit"] == "1.1"
    assert fleet.pip_installed("lab-14")["lab-yamlish"] == "1.0"


def test_shipped_python_env_runbook(fleet: Fleet, patching: Any, run: Any) -> None:
    """patch-python-env on the lab's venvs: pip-audit's fix installed, nothing else."""
    from tests.labs import fleet_pip

    runbook = Path(__file__).resolve().parents[1] / "runbooks" / "patch-python-env.yaml"
    hosts = "lab-15,lab-16"
    before = fleet.pip_installed("lab-16")
    result = run(
        runbook,
        hosts=hosts,
        audit_args=["-s", "osv", "--osv-url", fleet.osv_url],
        batches=[1],
        max_failed="0",
        health=GATE,
    )
    assert result.status == "succeeded", {k: s.error for k, s in result.steps.items()}
    scanned = {h["host"]: h for h in result.steps["scan"].output["hosts"]}
    assert scanned["lab-15"]["security"] == ["lab-httpkit=1.1"]
    assert scanned["lab-15"]["approved"] == ["lab-httpkit=1.1"]
    assert _outcomes_of(result, "rollout") == {"lab-15": "patched", "lab-16": "patched"}
    for name in ("lab-15", "lab-16"):
        now = fleet.pip_installed(name)
        assert now == {**before, "lab-httpkit": "1.1"}  # lab-yamlish: outdated, not security
    assert before["lab-yamlish"] != fleet_pip.PIP_OUTDATED["lab-yamlish"]


def test_baseline_rules() -> None:
    from datetime import UTC, datetime, timedelta

    from tasks.patch.baseline import Baseline
    from tasks.patch.model import Update

    now = datetime(2026, 6, 1, tzinfo=UTC)
    ssl = Update(provider="apt", name="lab-ssl", current="1.0", version="1.0.1", security=True)
    app = Update(provider="apt", name="lab-app", current="1.0", version="1.1")
    seen = {("apt", "lab-ssl", "1.0.1"): now - timedelta(days=8), ("apt", "lab-app", "1.1"): now}
    approved, rejected = Baseline(min_age_days=7).approve([ssl, app], seen, now)
    assert [u.pin for u in approved] == ["lab-ssl=1.0.1"]
    assert rejected == {"lab-app=1.1": "seen less than 7 days ago"}
    assert Baseline(classes="security").approve([ssl, app], seen, now)[1] == {
        "lab-app=1.1": "not a security update"
    }
    assert Baseline(deny=["lab-a*"]).approve([ssl, app], seen, now)[1] == {"lab-app=1.1": "denied"}
    assert Baseline(allow=["lab-app"]).approve([ssl, app], seen, now)[0] == [app]
    pinned, _ = Baseline(pins={"lab-app": "1.0.5"}).approve([app], seen, now)
    assert [u.pin for u in pinned] == ["lab-app=1.0.5"]
    assert Baseline(deny=["lab-ssl=1.0.*"]).rejects_installed("lab-ssl", "1.0.1")


def test_no_inventory_is_one_clear_line(
    run: Any, home: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ktlo.settings import reload_settings

    monkeypatch.setenv("KTLO_INVENTORY", str(home.runbooks / "missing.yaml"))
    reload_settings()
    runbook = Path(__file__).resolve().parents[1] / "runbooks" / "patch-scan.yaml"
    result = run(runbook)
    assert result.status == "failed"
    error = result.steps["scan"].error or ""
    assert error.startswith("no inventory at"), error
    assert "Traceback" not in error
