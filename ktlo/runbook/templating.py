"""Jinja2 templates in runbooks: sandboxed, strict, and analysable before anything runs.

A string that is exactly one `{{ expression }}` evaluates to the expression's native value
(`"{{ params.keep_daily }}"` gives the integer 7); any other string with template syntax
renders to a string.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.meta import find_undeclared_variables
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ktlo.errors import KtloError

_FULL = re.compile(r"^\s*\{\{(?P<expr>.*)\}\}\s*$", re.S)
ROOT_NAMES = frozenset({"params", "steps", "incident", "env", "secret", "run"})

ENV = ImmutableSandboxedEnvironment(
    undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
)
# For a value handed on to another shell (ssh HOST "…", sh -c "…"), which reads it again as code.
ENV.filters["shell_quote"] = lambda value: shlex.quote(str(value))


class TemplateError(KtloError):
    """A template failed to render; the message names the template and the reason."""


def is_template(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def full_expression(value: str) -> str | None:
    """The inner expression when `value` is exactly one `{{ ... }}` block."""
    m = _FULL.match(value)
    if m and "{{" not in m["expr"] and "}}" not in m["expr"]:
        return m["expr"].strip()
    return None


@lru_cache(maxsize=4096)
def _compiled_expression(expr: str) -> Any:
    return ENV.compile_expression(expr, undefined_to_none=False)


@lru_cache(maxsize=4096)
def _compiled_template(text: str) -> Any:
    return ENV.from_string(text)


def expression_source(value: str | bool) -> str:
    """The expression of an `if:` field, which may be written with or without braces."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return full_expression(value) or value


def _defined(value: Any) -> Any:
    """Expressions return StrictUndefined instead of raising; make that an error."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, list | tuple):
        for item in value:
            _defined(item)
    elif isinstance(value, dict):
        for item in value.values():
            _defined(item)
    return value


@contextmanager
def template_errors(label: str) -> Iterator[None]:
    """Any error while rendering becomes one TemplateError naming the template (`label`)."""
    try:
        yield
    except (UndefinedError, SecurityError, TemplateSyntaxError) as exc:
        raise TemplateError(f"{label}: {exc}") from None
    except KtloError:
        raise
    except Exception as exc:
        raise TemplateError(f"{label}: {type(exc).__name__}: {exc}") from None


def evaluate(expr: str, context: Mapping[str, Any]) -> Any:
    with template_errors(f"{{{{ {expr} }}}}"):
        return _defined(_compiled_expression(expr)(**context))


def render(value: Any, context: Mapping[str, Any]) -> Any:
    """Render every template inside `value` (strings, lists and mappings, recursively)."""
    if isinstance(value, str):
        if not is_template(value):
            return value
        expr = full_expression(value)
        if expr is not None:
            return evaluate(expr, context)
        with template_errors(repr(value)):
            return _compiled_template(value).render(**context)
    if isinstance(value, dict):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


# --- analysis -----------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A name a template reads, as a chain: `steps.dump.output.id` → ('steps','dump','output','id')."""

    chain: tuple[str, ...]


@dataclass(frozen=True)
class Analysis:
    references: tuple[Reference, ...]
    secrets: tuple[str, ...]
    dynamic_secrets: bool


def _chain(node: nodes.Node) -> tuple[str, ...] | None:
    parts: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            parts.append(str(node.arg.value))
            node = node.node
        elif isinstance(node, nodes.Name):
            parts.append(node.name)
            return tuple(reversed(parts))
        else:
            return None


def _walk(node: nodes.Node) -> Iterator[nodes.Node]:
    yield node
    for child in node.iter_child_nodes():
        yield from _walk(child)


def analyse(value: str, *, expression: bool = False) -> Analysis:
    """Names, attribute chains and secret names a template uses. Raises TemplateSyntaxError."""
    source = f"{{{{ {value} }}}}" if expression else value
    ast = ENV.parse(source)
    undeclared = find_undeclared_variables(ast)
    refs: list[Reference] = []
    secrets: list[str] = []
    dynamic = False
    covered: set[int] = set()
    for node in _walk(ast):
        if (
            isinstance(node, nodes.Call)
            and isinstance(node.node, nodes.Name)
            and node.node.name == "secret"
        ):
            if len(node.args) == 1 and isinstance(node.args[0], nodes.Const):
                secrets.append(str(node.args[0].value))
            else:
                dynamic = True
        if id(node) in covered:
            continue
        if isinstance(node, nodes.Getattr | nodes.Getitem | nodes.Name):
            chain = _chain(node)
            if chain is None:
                continue
            inner: nodes.Node = node
            while isinstance(inner, nodes.Getattr | nodes.Getitem):
                inner = inner.node
                covered.add(id(inner))
            if chain[0] in undeclared:
                refs.append(Reference(chain))
    return Analysis(tuple(refs), tuple(secrets), dynamic)


def templates_in(
    value: Any, loc: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Every template string inside `value`, with its location."""
    if isinstance(value, str):
        if is_template(value):
            yield loc, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from templates_in(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from templates_in(v, (*loc, i))
