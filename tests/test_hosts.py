"""The hosts layer (ktlo/hosts) on the real SSH fleet lab: inventory, runner, host.run, CLI."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from ktlo.errors import RunbookInvalid
from ktlo.hosts.inventory import Connection, InventoryMissing, UnknownHosts, load_inventory
from ktlo.hosts.runner import CommandResult, HostRunner
from ktlo.steps.context import StepContext, current_step
from tests.helpers import cli
from tests.labs.fleet import Fleet

HOSTILE = 'a b\'; touch /tmp/ktlo-pwned-$(id -u) "$HOME" `id` \\ *'


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_inventory_defaults_groups_and_selectors(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            defaults: {user: ops, port: 2222, env: {LANG: C}}
            hosts:
              web-1: {address: 10.0.0.11, groups: [web], env: {APT_CONFIG: /a}}
              web-2: {address: 10.0.0.12, groups: [web], port: 22}
              db-1: {address: 10.0.0.21, groups: [db]}
              here: {connection: local}
            """
        )
    )
    inv = load_inventory(path)
    web1 = inv.hosts["web-1"]
    assert (web1.user, web1.port, web1.env) == ("ops", 2222, {"LANG": "C", "APT_CONFIG": "/a"})
    assert inv.hosts["web-2"].port == 22
    assert inv.hosts["here"].connection is Connection.LOCAL
    assert [h.name for h in inv.select("all")] == ["web-1", "web-2", "db-1", "here"]
    assert [h.name for h in inv.select("web")] == ["web-1", "web-2"]
    assert [h.name for h in inv.select("db, here,web-1")] == ["web-1", "db-1", "here"]
    with pytest.raises(UnknownHosts, match="'nope'"):
        inv.select("web,nope")


def test_inventory_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("hosts:\n  web-1:\n    address: 10.0.0.1\n    port: 99999\n")
    with pytest.raises(RunbookInvalid) as err:
        load_inventory(path)
    assert f"{path}:4:" in str(err.value)
    path.write_text("hosts:\n  web-1: {adress: 10.0.0.1}\n")
    with pytest.raises(RunbookInvalid, match=r":2: .*adress"):
        load_inventory(path)
    with pytest.raises(InventoryMissing, match="KTLO_INVENTORY"):
        load_inventory(tmp_path / "missing.yaml")


def test_twenty_hosts_one_connection_each_env_applied(fleet: Fleet) -> None:
    hosts = load_inventory(fleet.inventory).select("all")
    assert len(hosts) == 20

    async def go() -> tuple[list[CommandResult], list[CommandResult]]:
        async with HostRunner() as runner:
            first = await runner.run_many(hosts, 'echo "$APT_CONFIG" "${SSH_CONNECTION%% *}"')
            again = await runner.run_many(hosts, 'echo "$APT_CONFIG" "${SSH_CONNECTION%% *}"')
            return first, again

    first, again = _run(go())
    for a, b in zip(first, again, strict=True):
        assert a.ok, a
        assert b.ok, b
        assert a.stdout.split()[0] == fleet[a.host].env["APT_CONFIG"]
    # the client's source port is the same: the second command used the same connection
    assert [r.stdout for r in first] == [r.stdout for r in again]
    assert len({r.stdout for r in first}) == 20


def test_a_runs_steps_share_connections_and_a_dead_one_is_replaced(fleet: Fleet) -> None:
    hosts = load_inventory(fleet.inventory).select("lab-05,lab-06")

    async def step(run_id: str) -> list[str]:  # a step of a run: its own runner
        token = current_step.set(StepContext(run_id=run_id, runbook="t", step_id="s"))
        try:
            async with HostRunner(keep_for_run=True) as runner:
                done = await runner.run_many(hosts, 'echo "$SSH_CONNECTION"')
        finally:
            current_step.reset(token)
        assert all(r.ok for r in done), done
        return [r.stdout.split()[1] for r in done]  # the client's port: which connection

    async def go() -> list[list[str]]:
        first, again, other = await step("run-a"), await step("run-a"), await step("run-b")
        fleet.kill("lab-06")  # its sshd and sessions die: run-b's kept connection with them
        fleet.restart("lab-06")
        return [first, again, other, await step("run-b")]

    first, again, other, after = _run(go())
    assert again == first  # the same run's next step took over its connections
    assert set(other).isdisjoint(first)  # another run has its own
    assert after[0] == other[0]
    assert after[1] != other[1]  # a new connection replaced the dead one


def test_hostile_value_stays_one_word(fleet: Fleet) -> None:
    host = load_inventory(fleet.inventory).hosts["lab-01"]

    async def go() -> CommandResult:
        async with HostRunner() as runner:
            return await runner.run(
                host, 'printf "%s\\n" "$V"; printf "<%s>" $V | wc -l', env={"V": HOSTILE}
            )

    done = _run(go())
    assert done.ok, done
    assert done.stdout.splitlines()[0] == HOSTILE
    assert not list(Path("/tmp").glob("ktlo-pwned-*"))


def test_timeout_kills_the_remote_command(fleet: Fleet) -> None:
    host = load_inventory(fleet.inventory).hosts["lab-02"]
    pidfile = fleet["lab-02"].dir / "run" / "sleeper.pid"

    async def go() -> tuple[CommandResult, CommandResult]:
        async with HostRunner() as runner:
            slow = await runner.run(host, f"echo $$ > {pidfile}; exec sleep 60", timeout_s=1)
            after = await runner.run(host, "echo still-usable")
            return slow, after

    slow, after = _run(go())
    assert slow.error is not None
    assert "timed out after 1s" in slow.error
    assert after.ok
    assert after.stdout.strip() == "still-usable"
    pid = int(pidfile.read_text())
    assert not Path(f"/proc/{pid}").exists(), "the timed-out command still runs on the host"


def test_wrong_host_key_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    lines = fleet.known_hosts.read_text().splitlines()
    # lab-01's address with lab-02's key: a man in the middle
    wrong = lines[0].split()[0] + " " + " ".join(lines[1].split()[1:])
    known = tmp_path / "known_hosts"
    known.write_text("\n".join([wrong, *lines[1:]]) + "\n")
    inv = load_inventory(fleet.inventory)
    bad = inv.hosts["lab-01"].model_copy(update={"known_hosts": known})

    async def go() -> CommandResult:
        async with HostRunner() as runner:
            return await runner.run(bad, "touch ran-anyway")

    done = _run(go())
    assert done.exit_code is None
    assert done.error is not None
    assert done.error.startswith("host key refused: lab-01")
    assert not (Path(fleet.user.home) / "ran-anyway").exists()


def test_unreachable_host_is_a_result(fleet: Fleet) -> None:
    hosts = load_inventory(fleet.inventory).select("lab-03,lab-04")
    fleet.kill("lab-03")

    async def go() -> list[CommandResult]:
        async with HostRunner() as runner:
            return await runner.run_many(hosts, "true")

    down, up = _run(go())
    assert down.error is not None
    assert down.error.startswith("unreachable: lab-03")
    assert up.ok


def test_local_host_env_and_timeout(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(
        yaml.safe_dump({"hosts": {"here": {"connection": "local", "env": {"V": HOSTILE}}}})
    )
    here = load_inventory(path).hosts["here"]

    async def go() -> tuple[CommandResult, CommandResult]:
        async with HostRunner() as runner:
            env = await runner.run(here, 'printf "%s" "$V"')
            slow = await runner.run(here, f"echo $$ > {tmp_path}/pid; exec sleep 60", timeout_s=0.5)
            return env, slow

    env, slow = _run(go())
    assert env.ok
    assert env.stdout == HOSTILE
    assert slow.error == "timed out after 0.5s (killed)"
    assert not Path(f"/proc/{(tmp_path / 'pid').read_text().strip()}").exists()


def test_host_run_step(fleet: Fleet, run: Any, home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTLO_INVENTORY", str(fleet.inventory))
    (home.runbooks / "fleet-echo.yaml").write_text(
        textwrap.dedent(
            """\
            name: fleet-echo
            parameters:
              word: {type: string}
            steps:
              - id: echo
                uses: host.run
                with:
                  hosts: web
                  command: printf '%s\\n' {{ params.word }}
            """
        )
    )
    from ktlo.settings import reload_settings

    reload_settings()
    result = run("fleet-echo", word=HOSTILE)
    assert result.status == "succeeded", result.steps["echo"]
    out = result.steps["echo"].output
    assert len(out["ok"]) == 10
    assert not out["failed"]
    assert {r["stdout"] for r in out["results"]} == {HOSTILE + "\n"}


def test_cli_hosts_list_and_check(fleet: Fleet, tmp_path: Path) -> None:
    env = {"KTLO_INVENTORY": str(fleet.inventory), "KTLO_HOME": str(tmp_path / "home")}
    listed = cli("hosts", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["hosts"]
    assert [r["name"] for r in rows][:2] == ["lab-01", "lab-02"]
    assert len(rows) == 20
    checked = cli("hosts", "check", "lab", "--json", env=env)
    assert checked.returncode == 0, checked.stderr
    assert all(
        r["reachable"] and r["host_key"] == "ok" for r in json.loads(checked.stdout)["hosts"]
    )
    # a wrong known_hosts: refused, exit 1, a clear line
    data = yaml.safe_load(fleet.inventory.read_text())
    (tmp_path / "known_hosts").write_text(
        fleet.known_hosts.read_text().replace("[127.0.0.1]", "[127.0.0.2]")
    )
    data["defaults"]["known_hosts"] = str(tmp_path / "known_hosts")
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump(data))
    refused = cli(
        "hosts",
        "check",
        "lab-05",
        "--json",
        env={**env, "KTLO_INVENTORY": str(tmp_path / "inv.yaml")},
    )
    assert refused.returncode == 1
    row = json.loads(refused.stdout)["hosts"][0]
    assert row["host_key"] == "refused"
    assert "known_hosts" in row["error"]
    missing = cli("hosts", "list", env={**env, "KTLO_INVENTORY": str(tmp_path / "none.yaml")})
    assert missing.returncode == 1
    assert "no inventory at" in missing.stderr
    assert "Traceback" not in missing.stderr
