"""Patch management on the real 20-host SSH fleet lab: scan, baselines, rollout, failures."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

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
