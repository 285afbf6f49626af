"""The shipped incident runbooks, end to end: alert → ktlo serve → run → notification."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import Home
from tests.helpers import REPO, Receiver, cli
from tests.serve_helpers import Served, api, wait_until
from tests.webhook_helpers import TOKEN, free_port

pytestmark = pytest.mark.timeout(600)


def _install(home: Home, name: str, **defaults: Any) -> None:
    """The shipped runbook, with parameter defaults adapted to this machine."""
    data = yaml.safe_load((REPO / "runbooks" / f"{name}.yaml").read_text())
    for key, value in defaults.items():
        data["parameters"][key]["default"] = value
    (home.runbooks / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _serve(home: Home, receiver: Receiver, port: int) -> Served:
    env = {
        **home.env,
        "KTLO_WEBHOOK_TOKEN": TOKEN,
        "KTLO_CHANNELS": f"oncall=json://127.0.0.1:{receiver.port}/oncall",
    }
    served = Served(env, "--port", str(port), webhook=True)
    served.wait_for("serving ", timeout=90)

    def answering() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answering, 30, "the webhook receiver")
    return served


def _alert(port: int, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"http://127.0.0.1:{port}/hooks/generic",
        json=body,
        headers={"authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    return response.json()["incidents"][0]


def _finished_run(runbook: str) -> Any:
    from ktlo.store.runs import recent_runs

    def done() -> Any:
        runs = [r for r in recent_runs(runbook) if r.status != "running"]
        return runs[0] if runs else None

    return wait_until(done, 120, f"a finished run of {runbook}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_service_down_is_diagnosed_restarted_and_reported(
    home: Home, prefect_api: str, receiver: Receiver, tmp_path: Path
) -> None:
    service_port = free_port()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("ok")
    start = f"cd {tmp_path}/site && exec {sys.executable} -m http.server {service_port} --bind 127.0.0.1"
    shim = [
        "sh",
        "-c",
        # the runbook appends `--` and the service label: $1 is "--", $2 the service
        f"echo restarting $2; ({start}) >/dev/null 2>&1 & sleep 0.5",
        "restart-shim",
    ]
    _install(
        home,
        "incident-service-down",
        restart_command=shim,
        settle_s=1,
        health_hosts=["127.0.0.1"],  # the alert's health_url names this host
    )
    hook_port = free_port()
    served = _serve(home, receiver, hook_port)
    started: list[subprocess.Popen[bytes]] = []
    try:
        assert not _listening(service_port)  # the service is down
        incident = _alert(
            hook_port,
            {
                "summary": "web is down",
                "dedup_key": "web-down",
                "event": "service_down",
                "labels": {"event": "service_down", "service": "web"},
                "annotations": {"health_url": f"http://127.0.0.1:{service_port}/"},
            },
        )
        assert incident["runbooks"] == ["incident-service-down"]
        run = _finished_run("incident-service-down")
        assert run.status == "succeeded", run.error
        assert run.trigger == "incident"
        from ktlo.store.runs import steps_of

        steps = {s.step_id: s for s in steps_of(run.id)}
        assert steps["health-before"].status == "succeeded"
        assert "ConnectError" in steps["health-before"].output["error"]
        assert steps["restart"].output["stdout"].strip() == "restarting web"
        assert steps["health-after"].status == "succeeded"
        assert steps["verdict"].status == "skipped"
        assert _listening(service_port)
        told = wait_until(lambda: receiver.json_urls(), 30, "the on-call notification")
        assert "web restarted: healthy again" in told[0]["title"]
        assert "web is down (generic:web-down)" in told[0]["message"]
        timeline = cli("incidents", "show", "generic:web-down", "--json", env=home.env)
        events = [t["what"] for t in __import__("json").loads(timeline.stdout)["timeline"]]
        assert events[:2] == ["incident.opened", "incident.run_started"]
        _alert(
            hook_port,
            {
                "summary": "web is down",
                "dedup_key": "web-down",
                "status": "resolved",
                "labels": {"event": "service_down", "service": "web"},
            },
        )
        listed = __import__("json").loads(cli("incidents", "--json", env=home.env).stdout)[
            "incidents"
        ]
        assert listed[0]["status"] == "resolved"
        opened = wait_until(
            lambda: _events("ktlo.incident.opened", incident["id"]), 30, "the Prefect event"
        )
        assert opened[0]["resource"]["service"] == "web"
        assert wait_until(
            lambda: _events("ktlo.incident.resolved", incident["id"]), 30, "the resolved event"
        )
    finally:
        served.stop()
        subprocess.run(["pkill", "-f", f"http.server {service_port}"], check=False)
        for p in started:
            p.kill()


def _events(name: str, incident_id: str) -> list[dict[str, Any]]:
    async def read(client: Any) -> list[dict[str, Any]]:
        response = await client._client.post(
            "/events/filter",
            json={
                "filter": {
                    "event": {"name": [name]},
                    "resource": {"id": [f"ktlo.incident.{incident_id}"]},
                    "occurred": {"since": "2020-01-01T00:00:00Z"},
                },
                "limit": 10,
            },
        )
        response.raise_for_status()
        return list(response.json()["events"])

    return api(read)


def test_disk_usage_cleans_only_old_files_in_declared_dirs(
    home: Home, prefect_api: str, receiver: Receiver, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    old, new = scratch / "old.log", scratch / "new.log"
    old.write_text("x" * 1000)
    new.write_text("y" * 1000)
    month_ago = time.time() - 30 * 86400
    os.utime(old, (month_ago, month_ago))
    elsewhere = tmp_path / "keep.log"
    elsewhere.write_text("z")
    os.utime(elsewhere, (month_ago, month_ago))
    _install(home, "incident-disk-usage", cleanup_dirs=[str(scratch)], target_percent=100)
    hook_port = free_port()
    served = _serve(home, receiver, hook_port)
    try:
        _alert(
            hook_port,
            {
                "summary": "disk filling up",
                "dedup_key": "disk-1",
                "labels": {"event": "disk_usage", "mountpoint": str(tmp_path)},
            },
        )
        run = _finished_run("incident-disk-usage")
        assert run.status == "succeeded", run.error
        assert not old.exists()
        assert new.exists()
        assert elsewhere.exists()
        told = wait_until(lambda: receiver.json_urls(), 30, "the notification")
        assert told[0]["title"].startswith(f"Disk {tmp_path}:")
        assert "Deleted: 1 file(s) older than 7 days" in told[0]["message"]
    finally:
        served.stop()
