"""Third-party step types and the runbook hand-over between `ktlo run` and its flow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import Home, unavailable
from tests.helpers import REPO, cli

PLUGIN = Path(__file__).parent / "plugins" / "ktlo-hello"


def _uv() -> str:
    found = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    if not Path(found).exists():
        unavailable("uv is needed to install the test plugin package")
    return found


def test_a_third_party_package_adds_a_step_type(
    prefect_api: str, home: Home, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            _uv(),
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--python",
            sys.executable,
            "--target",
            str(target),
            str(PLUGIN),
        ],
        check=True,
        timeout=300,
    )
    home.runbook(
        "greet",
        """
        name: greet
        steps:
          - id: hi
            uses: hello.greet
            with: {name: operator}
        """,
    )
    env = {**home.env, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}
    checked = cli("validate", env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = cli("run", "greet", "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = json.loads(result.stdout)["steps"]
    assert steps[0]["uses"] == "hello.greet"
    assert steps[0]["output"] == {"greeting": "hello, operator"}
    # Without the package the step type is unknown, and validation says so.
    missing = cli("validate", env=home.env)
    assert missing.returncode == 1
    assert "hello.greet" in missing.stdout + missing.stderr


def test_the_flow_runs_the_runbook_ktlo_run_validated(home: Home) -> None:
    from ktlo.runbook.loader import hand_over, load_runbook

    path = home.runbook("one", "name: one\nsteps:\n  - {id: a, uses: log, with: {message: hi}}\n")
    first = load_runbook(path)
    hand_over(first)
    assert load_runbook(path) is first  # no second parse in the same process
    assert load_runbook(path) is not first  # handed over once
    hand_over(first)
    path.write_text(path.read_text().replace("hi", "edited"), encoding="utf-8")
    again = load_runbook(path)  # edited in between: read again
    assert again is not first
    assert again.steps[0].with_["message"] == "edited"
