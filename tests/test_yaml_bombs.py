"""YAML and size bombs: aliases are refused, files are size-limited, and validation grows
linearly with the step count; each is one `path:line` line from the real CLI."""

from __future__ import annotations

import os
import resource
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from ktlo.errors import RunbookInvalid
from ktlo.runbook.loader import load_runbook
from ktlo.runbook.validation import find_cycle
from ktlo.runbook.yamlsrc import MAX_YAML_BYTES, parse_yaml
from tests.conftest import Home
from tests.helpers import KTLO, cli

# 406 bytes that expand to 9**9 strings when constructed ("billion laughs")
BOMB = "name: bomb\nsteps: []\n" + "\n".join(
    f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}" if i else '"lol"'] * 9) + "]"
    for i in range(9)
)
MEMORY_CAP = 1024**3  # the CLI below gets 1 GiB of address space; the bomb wanted 5.7 GB


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP * 2, MEMORY_CAP * 2))


def _chain(steps: int) -> str:
    body = "".join(
        f'  - id: s{i}\n    uses: log\n    with: {{message: "{{{{ steps.s{i - 1}.output.message }}}}"}}\n'
        if i
        else '  - id: s0\n    uses: log\n    with: {message: "start"}\n'
        for i in range(steps)
    )
    return f"name: chain\nsteps:\n{body}"


def test_an_alias_bomb_is_one_line_naming_the_alias(home: Home) -> None:
    path = home.runbook("bomb", BOMB)
    assert len(BOMB) < 420
    result = subprocess.run(
        [KTLO, "validate", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **home.env},
        preexec_fn=_capped,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"{path}:4: YAML aliases are not allowed (*a)" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "MemoryError" not in result.stderr


def test_aliases_are_refused_in_every_yaml_file(tmp_path: Path) -> None:
    # yamlsrc is what every YAML loader of ktlo uses: a merge key is an alias too
    text = "defaults: &d {retries: 2}\nsteps:\n  - id: a\n    <<: *d\n"
    with pytest.raises(RunbookInvalid) as caught:
        parse_yaml(text, "inventory.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "inventory.yaml:4: YAML aliases are not allowed (*d): write the value out"
    ]
    # an anchor that nothing refers to is harmless
    assert parse_yaml("a: &x 1\nb: 2\n", "ok.yaml").data == {"a": 1, "b": 2}


def test_a_file_over_the_limit_is_refused_before_it_is_read(home: Home) -> None:
    path = home.runbook("huge", "name: huge\nsteps: []\n# " + "x" * MAX_YAML_BYTES + "\n")
    result = cli("validate", str(path), env=home.env)
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if str(path) in line]
    assert lines == [
        f"{path}:1: file is {path.stat().st_size:,} bytes; YAML files are limited to 1024 KiB"
    ]


def _validation_peak(home: Home, steps: int) -> int:
    path = home.runbook(f"chain{steps}", _chain(steps))
    tracemalloc.start()
    try:
        runbook = load_runbook(path)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(runbook.steps) == steps
    return peak


def test_validation_memory_grows_linearly_with_the_step_count(home: Home) -> None:
    load_runbook(home.runbook("warm", _chain(3)))  # step types registered, caches filled
    small, large = _validation_peak(home, 500), _validation_peak(home, 4000)
    # 8 times the steps: linear is about 8 times the memory, quadratic 64 times
    assert large < small * 12, (small, large)


def test_a_long_chain_has_no_recursion_limit() -> None:
    deps = {f"s{i}": [f"s{i - 1}"] if i else [] for i in range(5000)}
    assert find_cycle(deps) is None
    deps["s0"] = ["s4999"]
    cycle = find_cycle(deps)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert len(cycle) == 5001


def test_the_channels_file_refuses_aliases_too(home: Home) -> None:
    (home.path / "channels.yaml").write_text(
        "oncall: json://127.0.0.1:9/x\n" + BOMB.split("\n", 2)[2]
    )
    path = home.runbook(
        "notifying",
        "name: notifying\nnotify: {on_failure: [oncall]}\n"
        "steps:\n  - id: a\n    uses: log\n    with: {message: x}\n",
    )
    result = subprocess.run(
        [KTLO, "validate", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, **home.env},
        preexec_fn=_capped,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"{home.path / 'channels.yaml'}:3: YAML aliases are not allowed" in result.stdout
