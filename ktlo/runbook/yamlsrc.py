"""YAML that remembers where each value came from, so every problem can say `path:line`.

Every YAML file ktlo reads comes through here, and some come from places an attacker may
write to (a served runbooks directory): aliases are refused, since a 406-byte "billion
laughs" document expands to gigabytes when constructed, and files are limited to
`MAX_YAML_BYTES`. Both are refused before anything is built from the document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ktlo.errors import Problem, RunbookInvalid

Loc = tuple[str | int, ...]
MAX_YAML_BYTES = 1024 * 1024  # a runbook of 4,000 steps is about 400 KB


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


class AliasFound(Exception):
    """The composed document shares a node: the text uses an alias."""


def _index(
    node: yaml.Node,
    loc: Loc,
    lines: dict[Loc, int],
    problems: list[tuple[int, str]],
    visited: set[int],
) -> None:
    """Record lines and duplicate keys; each node is visited once, so an alias (a node
    reached twice) is found before anything is constructed from it."""
    if id(node) in visited:
        raise AliasFound
    visited.add(id(node))
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                for part in (key_node, value_node):  # no line of their own, but may be aliases
                    _index(part, loc, {}, [], visited)
                continue
            key = key_node.value
            if key in seen:
                problems.append((key_node.start_mark.line + 1, f"duplicate key '{key}'"))
            seen.add(key)
            lines[(*loc, key)] = key_node.start_mark.line + 1
            _index(value_node, (*loc, key), lines, problems, visited)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*loc, i), lines, problems, visited)


def _first_alias(text: str) -> tuple[int, str]:
    """Line and name of the first alias in a document that has one (its events say where)."""
    for event in yaml.parse(text, Loader=RunbookLoader):
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1 if event.start_mark else 1
            return line, str(event.anchor)
    return 1, "?"


def _too_big(path: str, size: int) -> RunbookInvalid:
    limit = MAX_YAML_BYTES // 1024
    return RunbookInvalid(
        [Problem(path, 1, f"file is {size:,} bytes; YAML files are limited to {limit} KiB")]
    )


def parse_yaml(text: str, path: str) -> Source:
    """Parse one YAML document; syntax errors, duplicate keys, aliases and a text over
    `MAX_YAML_BYTES` raise `RunbookInvalid`."""
    if len(text) > MAX_YAML_BYTES:
        raise _too_big(path, len(text.encode("utf-8")))
    lines: dict[Loc, int] = {}
    dupes: list[tuple[int, str]] = []
    try:
        loader = RunbookLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _index(node, (), lines, dupes, set())
            data = loader.construct_document(node) if node is not None and not dupes else None
        finally:
            loader.dispose()
    except AliasFound:
        line, name = _first_alias(text)
        message = f"YAML aliases are not allowed (*{name}): write the value out"
        raise RunbookInvalid([Problem(path, line, message)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = exc.problem or exc.context or "invalid YAML"
        raise RunbookInvalid([Problem(path, line, f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise RunbookInvalid([Problem(path, 1, f"YAML error: {exc}")]) from None
    if dupes:
        raise RunbookInvalid([Problem(path, line, msg) for line, msg in dupes])
    return Source(path=path, data=data, lines=lines)


def load_yaml(path: Path) -> Source:
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise _too_big(str(path), size)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunbookInvalid([Problem(str(path), 1, "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunbookInvalid([Problem(str(path), 1, f"cannot read file: {exc}")]) from None
    return parse_yaml(text, str(path))
