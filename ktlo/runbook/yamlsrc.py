"""YAML that remembers where each value came from, so every problem can say `path:line`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ktlo.errors import Problem, RunbookInvalid

Loc = tuple[str | int, ...]


@dataclass
class Source:
    """A parsed YAML document and the line of every mapping key and sequence item in it."""

    path: str
    data: Any
    lines: dict[Loc, int] = field(default_factory=dict)

    def line_of(self, loc: Sequence[str | int]) -> int:
        """Line of the deepest known node on `loc` (1 when nothing on the path is known)."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 1)

    def problem(self, loc: Sequence[str | int], message: str) -> Problem:
        return Problem(self.path, self.line_of(loc), message)


_BaseLoader: type[yaml.SafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)  # libyaml when present


class RunbookLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """YAML 1.2 booleans: only true/false are booleans, so `id: no` or `on: off` stay strings."""


RunbookLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RunbookLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)

_MISSING = object()


def child(node: Any, part: str | int) -> Any:
    """`node[part]` for mappings and sequences, or `MISSING` when there is no such child."""
    if isinstance(node, dict):
        return node.get(part, _MISSING)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return _MISSING


MISSING = _MISSING


def _index(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], problems: list[tuple[int, str]]
) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = key_node.value
            if key in seen:
                problems.append((key_node.start_mark.line + 1, f"duplicate key '{key}'"))
            seen.add(key)
            lines[(*loc, key)] = key_node.start_mark.line + 1
            _index(value_node, (*loc, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*loc, i), lines, problems)


def parse_yaml(text: str, path: str) -> Source:
    """Parse one YAML document; syntax errors and duplicate keys raise `RunbookInvalid`."""
    try:
        loader = RunbookLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = exc.problem or exc.context or "invalid YAML"
        raise RunbookInvalid([Problem(path, line, f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise RunbookInvalid([Problem(path, 1, f"YAML error: {exc}")]) from None
    lines: dict[Loc, int] = {}
    dupes: list[tuple[int, str]] = []
    if node is not None:
        _index(node, (), lines, dupes)
    if dupes:
        raise RunbookInvalid([Problem(path, line, msg) for line, msg in dupes])
    return Source(path=path, data=data, lines=lines)


def load_yaml(path: Path) -> Source:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunbookInvalid([Problem(str(path), 1, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunbookInvalid([Problem(str(path), 1, f"cannot read file: {exc}")]) from None
    return parse_yaml(text, str(path))
