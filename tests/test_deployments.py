"""prefect.yaml is generated from runbooks/ and each deployment gets the runbook's typed form."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Home
from tests.helpers import REPO, cli


def test_prefect_yaml_is_in_sync_with_runbooks() -> None:
    from ktlo.orchestration.deployments import generate

    text, problems = generate(REPO / "runbooks")
    assert not problems
    assert (REPO / "prefect.yaml").read_text(encoding="utf-8") == text, (
        "run `ktlo deployments --write`"
    )


def test_catalog_flow_signature_is_the_runbooks_parameters(home: Home) -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.catalog import flow_for
    from ktlo.runbook.loader import load_runbook

    rb = load_runbook(
        home.runbook(
            "typed-form",
            """
            name: typed-form
            description: Restart a service.
            parameters:
              service: {type: string, description: Which service, enum: [api, worker]}
              batch: {type: integer, default: 2, minimum: 1, maximum: 10, description: Hosts at a time}
              dry: {type: boolean, default: true}
            steps:
              - id: s
                uses: log
                with: {message: "{{ params.service }}"}
            """,
        )
    )
    schema = parameter_schema(flow_for(rb)).model_dump()
    props = schema["properties"]
    assert list(props) == ["service", "batch", "dry"]
    assert props["service"]["enum"] == ["api", "worker"]
    assert props["service"]["description"] == "Which service"
    assert props["batch"] | {"position": 0} == {
        "type": "integer",
        "default": 2,
        "minimum": 1,
        "maximum": 10,
        "description": "Hosts at a time",
        "title": "batch",
        "position": 0,
    }
    assert props["dry"]["type"] == "boolean"
    assert schema["required"] == ["service"]


def test_write_and_check(home: Home, tmp_path: Path) -> None:
    home.runbook(
        "nightly",
        "name: nightly\nschedule: {cron: '0 2 * * *'}\nsteps:\n  - id: a\n    uses: log\n    with: {message: hi}\n",
    )
    target = tmp_path / "prefect.yaml"
    stale = cli("deployments", "--check", "--file", str(target), env=home.env)
    assert stale.returncode == 1
    assert "stale" in stale.stderr
    wrote = cli("deployments", "--write", "--file", str(target), env=home.env)
    assert wrote.returncode == 0, wrote.stderr
    assert "entrypoint: flows/catalog.py:nightly" in target.read_text()
    assert "cron: 0 2 * * *" in target.read_text()
    assert cli("deployments", "--check", "--file", str(target), env=home.env).returncode == 0


def test_invalid_runbook_does_not_become_a_deployment(home: Home, tmp_path: Path) -> None:
    home.runbook("bad", "name: bad\nsteps:\n  - id: a\n    uses: nope\n")
    result = cli("deployments", "--write", "--file", str(tmp_path / "p.yaml"), env=home.env)
    assert result.returncode == 1
    assert "bad.yaml:4: step 'a': unknown step type 'nope'" in result.stdout
    assert not (tmp_path / "p.yaml").exists()
