"""Gatus-style conditions: `status == 200`, `body.status == "UP"`, `cert_days > 14`, ...

A condition is `PLACEHOLDER OP VALUE`. The placeholder names a fact the probe observed
(which facts exist is declared by the check type's `PLACEHOLDERS`, so a typo is caught when
the runbook is validated, not at 3 a.m.); `body.a.b[0]` walks into a JSON body,
`headers.<name>` reads a response header and `len(x)` measures a string or list. The value is a JSON literal (`200`,
`"UP"`, `true`, `null`, `["a", "b"]`), so strings are always quoted and nothing is guessed.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tasks.health.checks import CHECK_TYPES

SYMBOL_OPS = ("==", "!=", "<=", ">=", "<", ">")
WORD_OPS = ("not contains", "contains", "matches", "in")
_LHS = r"(?:len\(\s*[A-Za-z_][^\s()=!<>]*\s*\)|[A-Za-z_][^\s()=!<>]*)"
_SYMBOL = re.compile(rf"^\s*(?P<lhs>{_LHS})\s*(?P<op>==|!=|<=|>=|<|>)\s*(?P<rhs>.+?)\s*$")
_WORD = re.compile(
    rf"^\s*(?P<lhs>{_LHS})\s+(?P<op>not\s+contains|contains|matches|in)\s+(?P<rhs>.+?)\s*$"
)
_SEGMENT = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+)\]")


class ConditionError(ValueError):
    """A condition that cannot be parsed or does not fit its check type."""


@dataclass(frozen=True)
class Condition:
    text: str
    name: str  # the placeholder
    path: tuple[str | int, ...]  # JSON path / header name after the placeholder
    length: bool  # len(...)
    op: str
    value: Any
    pattern: re.Pattern[str] | None = None

    def evaluate(self, facts: dict[str, Any]) -> tuple[bool, Any]:
        """(passed, actual value); a fact the probe could not observe fails the condition."""
        actual = resolve(facts, self.name, self.path)
        if isinstance(actual, Missing):
            return False, actual
        if self.length:
            if not isinstance(actual, str | list | dict):
                return False, Missing(f"len() of {type(actual).__name__}")
            actual = len(actual)
        return _compare(self.op, actual, self.value, self.pattern), actual


@dataclass(frozen=True)
class Missing:
    """A value that is not there, and why (shown as the actual value)."""

    reason: str

    def __str__(self) -> str:
        return f"<{self.reason}>"


def resolve(facts: dict[str, Any], name: str, path: tuple[str | int, ...]) -> Any:
    if name not in facts:
        return Missing("no value")
    value = facts[name]
    if not path:
        return value
    if name == "headers" and isinstance(value, dict):
        key = str(path[0]).lower()
        return value.get(key, Missing(f"no header {path[0]}"))
    if isinstance(value, str | bytes):
        cache_key = f"{name}#json"  # several conditions on one body parse it once
        if cache_key not in facts:
            try:
                facts[cache_key] = json.loads(value)
            except ValueError:
                facts[cache_key] = Missing(f"{name} is not JSON")
        value = facts[cache_key]
        if isinstance(value, Missing):
            return value
    for part in path:
        in_list = isinstance(part, int) and isinstance(value, list) and part < len(value)
        if in_list or (isinstance(part, str) and isinstance(value, dict) and part in value):
            value = value[part]
        else:
            return Missing(f"no {name}{_path_text(path)}")
    return value


def _path_text(path: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _compare(op: str, actual: Any, expected: Any, pattern: re.Pattern[str] | None) -> bool:
    if op in ("<", "<=", ">", ">="):
        a, b = _number(actual), _number(expected)
        if a is None or b is None:
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if op in ("==", "!="):
        return _equal(actual, expected) == (op == "==")
    if op in ("contains", "not contains"):
        if isinstance(actual, str):
            found = isinstance(expected, str) and expected in actual
        elif isinstance(actual, list):
            found = any(_equal(item, expected) for item in actual)
        elif isinstance(actual, dict):
            found = expected in actual
        else:
            return False
        return found == (op == "contains")
    if op == "matches":
        return pattern is not None and pattern.search(_text(actual)) is not None
    if op == "in":
        return any(_equal(actual, item) for item in expected)
    raise ConditionError(f"unknown operator {op}")  # parse() makes this unreachable


def _equal(a: Any, b: Any) -> bool:
    na, nb = _number(a), _number(b)
    if na is not None and nb is not None:
        return na == nb
    if isinstance(a, list) and isinstance(b, list):
        return sorted(map(_text, a)) == sorted(map(_text, b))
    return type(a) is type(b) and a == b


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


@lru_cache(maxsize=4096)
def parse(text: str, check_type: str) -> Condition:
    """Parse one condition for a check type; raises `ConditionError` with a readable reason."""
    match = _SYMBOL.match(text) or _WORD.match(text)
    if match is None:
        raise ConditionError(
            f"cannot read condition {text!r}: expected PLACEHOLDER OPERATOR VALUE, like "
            f"'status == 200' (operators: {', '.join(SYMBOL_OPS + WORD_OPS)})"
        )
    lhs, op, rhs = match["lhs"], " ".join(match["op"].split()), match["rhs"]
    length = lhs.startswith("len(")
    if length:
        lhs = lhs[4:-1].strip()
    name, path, kind = _placeholder(lhs, check_type)
    if length:
        if kind not in ("string", "list", "text", "any"):
            raise ConditionError(f"len() needs a string or a list; {name} is a {kind}")
        kind = "number"
    try:
        value = json.loads(rhs)
    except ValueError:
        raise ConditionError(
            f"cannot read the value {rhs!r} in {text!r}: use a number, true, false, null, "
            f'a "quoted string" or a [list]'
        ) from None
    pattern = _check_value(name, kind, op, value)
    return Condition(text, name, path, length, op, value, pattern)


def _placeholder(lhs: str, check_type: str) -> tuple[str, tuple[str | int, ...], str]:
    check = CHECK_TYPES.get(check_type)
    if check is None:
        raise ConditionError(f"unknown check type {check_type!r}")
    known = check.PLACEHOLDERS
    name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", lhs)
    head = name.group(0) if name else lhs
    rest = lhs[len(head) :]
    if head not in known:
        hint = difflib.get_close_matches(head, list(known), n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConditionError(
            f"unknown placeholder '{head}' for {article(check_type)} {check_type} check{extra}; "
            f"{check_type} checks know: {', '.join(describe(check_type))}"
        )
    path: list[str | int] = []
    pos = 0
    while pos < len(rest):
        seg = _SEGMENT.match(rest, pos)
        if seg is None:
            raise ConditionError(f"cannot read the path {rest!r} after '{head}'")
        path.append(seg.group(1) if seg.group(1) is not None else int(seg.group(2)))
        pos = seg.end()
    kind = known[head]
    if kind == "map":
        if len(path) != 1 or not isinstance(path[0], str):
            raise ConditionError(f"'{head}' needs one name, like {head}.content-type")
        return head, tuple(path), "string"
    if path and kind != "text":
        raise ConditionError(f"'{head}' is a {kind}; it has no fields to select")
    if kind == "text":
        kind = "any" if path else "string"
    return head, tuple(path), kind


def _check_value(name: str, kind: str, op: str, value: Any) -> re.Pattern[str] | None:
    if op in ("<", "<=", ">", ">="):
        if _number(value) is None:
            raise ConditionError(f"'{op}' compares numbers; {value!r} is not a number")
        if kind not in ("number", "any"):
            raise ConditionError(f"'{op}' compares numbers; {name} is a {kind}")
    elif op in ("contains", "not contains"):
        if kind not in ("string", "list", "any"):
            raise ConditionError(f"'{op}' needs a string or a list; {name} is a {kind}")
        if kind == "string" and not isinstance(value, str):
            raise ConditionError(f"'{op}' on a string needs a \"quoted string\" value")
    elif op == "matches":
        if not isinstance(value, str):
            raise ConditionError("'matches' needs a regular expression as a \"quoted string\"")
        try:
            return re.compile(value)
        except re.error as exc:
            raise ConditionError(f"invalid regular expression {value!r}: {exc}") from None
    elif op == "in":
        if not isinstance(value, list):
            raise ConditionError("'in' needs a list, like status in [200, 204]")
    elif value is not None:
        expected = {"number": _number(value) is not None, "bool": isinstance(value, bool)}
        expected["string"] = isinstance(value, str)
        expected["list"] = isinstance(value, list)
        if kind in expected and not expected[kind]:
            raise ConditionError(f"{name} is a {kind}; {json.dumps(value)} is not")
    return None


def article(word: str) -> str:
    return "an" if word[0] in "aeiouh" else "a"


def describe(check_type: str) -> list[str]:
    """The placeholders a check type offers, as an operator would write them."""
    out = []
    for name, kind in CHECK_TYPES[check_type].PLACEHOLDERS.items():
        if kind == "text":
            out += [name, f"{name}.<json path>"]
        elif kind == "map":
            out.append(f"{name}.<name>")
        else:
            out.append(name)
    return out


def show(value: Any, limit: int = 120) -> str:
    """An actual value as a notification shows it: short, one line, strings quoted."""
    if isinstance(value, Missing):
        return str(value)
    if isinstance(value, float):
        text = f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    else:
        text = json.dumps(value, default=str, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
