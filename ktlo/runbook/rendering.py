"""How a step's `with:` fields are rendered: as values, as argv words, as shell source, as URLs.

Trust model (docs/security.md): runbook files, parameters, `env` and secrets are trusted;
incident data, HTTP responses and step outputs (`incident.*`, `steps.*`) are not. Most fields
take a rendered value as it is (`AsValue`, the default). A step input model names the fields
that need more by overriding `StepInput.renderings()`:

- `AsWords`: a string command is split into words *before* rendering, so a value stays
  inside its word (`"restart {{ incident.labels.service }}"` is two argv elements whatever
  the label holds).
- `AsShell`: shell source; each `{{ }}` value is passed as an environment variable in the
  named mapping field and referenced from the command (see ktlo.runbook.shelltemplate).
- `AsUrl`: a URL whose scheme, host or port comes from untrusted data is refused unless its
  host is in the named allow-list field.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import httpx
from jinja2 import TemplateSyntaxError

from ktlo.runbook.shelltemplate import compile_shell, render_shell
from ktlo.runbook.templating import (
    ENV,
    TemplateError,
    full_expression,
    is_template,
    render,
    templates_in,
)
from ktlo.steps.renderings import AsShell, AsUrl, AsValue, AsWords, Rendering

UNTRUSTED_ROOTS = frozenset({"incident", "steps"})


@dataclass(frozen=True)
class _Segment:
    jinja: bool
    text: str
    names: frozenset[str] = frozenset()


@lru_cache(maxsize=1024)
def _segments(template: str) -> tuple[_Segment, ...]:
    """Literal text and `{{ }}` / `{% %}` / `{# #}` regions, in order (Jinja's own lexer)."""
    out: list[_Segment] = []
    buf: list[str] = []
    names: set[str] = set()
    inside = False
    try:
        for _, kind, value in ENV.lexer.tokeniter(template, None):
            if not inside and kind == "data":
                out.append(_Segment(False, value))
                continue
            inside = True
            buf.append(value)
            if kind == "name":
                names.add(value)
            if kind.endswith("_end"):
                out.append(_Segment(True, "".join(buf), frozenset(names)))
                buf, names, inside = [], set(), False
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{template!r}: template syntax error: {exc.message}") from None
    if buf:
        out.append(_Segment(True, "".join(buf), frozenset(names)))
    return tuple(out)


_MARK = re.compile("\x00([0-9]+)\x00")


@lru_cache(maxsize=1024)
def split_words(template: str) -> tuple[str, ...]:
    """The words of a command template, split as a POSIX shell would split the literal text."""
    segments = _segments(template)
    text = "".join(f"\x00{i}\x00" if s.jinja else s.text for i, s in enumerate(segments))
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise TemplateError(f"{template!r}: cannot split into words: {exc}") from None
    return tuple(_MARK.sub(lambda m: segments[int(m[1])].text, w) for w in words)


def render_words(template: str, context: Mapping[str, Any]) -> list[Any]:
    """One argv element per word; a word that is one expression giving a list adds its items."""
    argv: list[Any] = []
    for word in split_words(template):
        try:
            value = render(word, context)
        except TemplateError as exc:
            if "{%" in word:
                raise TemplateError(
                    f"{template!r}: a {{% %}} block must open and close inside one word ({exc})"
                ) from None
            raise
        if full_expression(word) is not None and isinstance(value, list | tuple):
            argv.extend(value)
        else:
            argv.append(value)
    return argv


def untrusted_authority(template: str) -> bool:
    """Whether the scheme, host or port of a URL template comes from incident or step data."""
    segments = _segments(template)
    pseudo = "".join("\x00" if s.jinja else s.text for s in segments)
    scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", pseudo)
    start = scheme.end() if scheme else 0
    end = next((i for i in range(start, len(pseudo)) if pseudo[i] in "/?#"), len(pseudo))
    before = pseudo[:end].count("\x00")
    regions = [s for s in segments if s.jinja][:before]
    return any(s.names & UNTRUSTED_ROOTS for s in regions)


def _untrusted(value: Any) -> bool:
    """Whether any template inside `value` reads incident or step data."""
    return any(_names(t) & UNTRUSTED_ROOTS for _, t in templates_in(value))


def _names(template: str) -> frozenset[str]:
    return frozenset().union(*(s.names for s in _segments(template)))


def host_allowed(host: str, allowed: list[str]) -> bool:
    """`host` equals an entry, or an entry `*.example.com` covers it (case-insensitive)."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = str(entry).lower().rstrip(".")
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def _check_url(field: str, url: Any, rendering: AsUrl, rendered: dict[str, Any]) -> None:
    listed = rendered.get(rendering.allowed_hosts)
    allowed = [str(h) for h in listed] if isinstance(listed, list | tuple) else []
    try:
        host = httpx.URL(str(url)).host  # the parser that will send the request
    except httpx.InvalidURL as exc:
        raise TemplateError(f"with.{field}: not a URL ({exc}); nothing was sent") from None
    if not host_allowed(host, allowed):
        raise TemplateError(
            f"with.{field}: host '{host}' comes from incident or step data and is not in "
            f"with.{rendering.allowed_hosts} ({', '.join(allowed) or 'empty'}); nothing was sent"
        )


def render_inputs(raw: Any, renderings: Mapping[str, Rendering], context: Mapping[str, Any]) -> Any:
    """Render a step's `with:` mapping, each field as its step type declares."""
    if not isinstance(raw, dict) or not renderings:
        return render(raw, context)
    special = {k: r for k, r in renderings.items() if k in raw and not isinstance(r, AsValue)}
    out = {k: render(v, context) for k, v in raw.items() if k not in special}
    for field, rendering in special.items():
        value = raw[field]
        if isinstance(rendering, AsUrl):
            if _untrusted(raw.get(rendering.allowed_hosts)):
                raise TemplateError(
                    f"with.{rendering.allowed_hosts} must not use incident or step data"
                )
            out[field] = render(value, context)
            if isinstance(value, str) and is_template(value) and untrusted_authority(value):
                _check_url(field, out[field], rendering, out)
        elif not (isinstance(value, str) and is_template(value)):
            out[field] = render(value, context)
        elif isinstance(rendering, AsWords):
            out[field] = render_words(value, context)
        else:
            out[field] = _shell(field, value, rendering, out, context)
    return {**{k: out[k] for k in raw}, **out}  # in the order written


def _shell(
    field: str, value: str, rendering: AsShell, out: dict[str, Any], context: Mapping[str, Any]
) -> str:
    text, variables = render_shell(value, dict(context))
    target = out.get(rendering.variables)
    if not variables or not isinstance(target, dict | None):
        return text  # nothing to pass, or the input model reports the field's wrong type
    clash = sorted(set(variables) & set(target or {}))
    if clash:
        raise TemplateError(
            f"with.{rendering.variables}.{clash[0]}: this name is used for a value of with.{field}"
        )
    out[rendering.variables] = {**(target or {}), **variables}
    return text


def problems(raw: Any, renderings: Mapping[str, Rendering]) -> list[tuple[tuple[str, ...], str]]:
    """What `ktlo validate` reports about these fields before anything runs."""
    found: list[tuple[tuple[str, ...], str]] = []
    if not isinstance(raw, dict):
        return found
    for field, rendering in renderings.items():
        value = raw.get(field)
        if isinstance(rendering, AsUrl):
            found += _url_problems(field, value, rendering, raw)
        if not (isinstance(value, str) and is_template(value)):
            continue
        try:
            if isinstance(rendering, AsWords):
                for word in split_words(value):
                    if is_template(word):
                        ENV.parse(word)
            elif isinstance(rendering, AsShell):
                compile_shell(value)
        except TemplateSyntaxError as exc:
            message = f"a {{% %}} block must open and close inside one word ({exc.message})"
            found.append(((field,), f"with.{field}: {message}"))
        except TemplateError as exc:
            found.append(((field,), f"with.{field}: {exc}"))
    return found


def _url_problems(
    field: str, value: Any, rendering: AsUrl, raw: dict[str, Any]
) -> list[tuple[tuple[str, ...], str]]:
    allowed = raw.get(rendering.allowed_hosts)
    try:
        if _untrusted(allowed):
            message = f"with.{rendering.allowed_hosts} must not use incident or step data"
            return [((rendering.allowed_hosts,), message)]
        risky = isinstance(value, str) and is_template(value) and untrusted_authority(value)
    except TemplateError:
        return []  # the template check reports the syntax error
    if risky and not allowed:
        return [
            (
                (field,),
                f"with.{field}: its host comes from incident or step data; list the hosts it "
                f"may name in with.{rendering.allowed_hosts} (any other is refused)",
            )
        ]
    return []
