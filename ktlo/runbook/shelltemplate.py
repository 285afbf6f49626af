"""`shell: true` commands as templates: a `{{ }}` value reaches the shell as data, never as code.

Each `{{ expression }}` in a shell command is replaced by a reference to an environment
variable (`"${KTLO_ARG_1}"`) and its value goes into that variable. The shell expands the
variable; it never parses the value, so `$(…)`, quotes, `;` or newlines in alert text stay
text. This is auto-escaping for the shell, as Jinja auto-escapes for HTML, but without
escaping rules to get wrong: whatever the value holds, it is one word.

The form of the reference depends on where the expression stands in the shell source, which
a small scanner tracks through the literal text: unquoted → `"${V}"` (one word: no field
splitting, no globbing), inside '…' → `'"${V}"'`, inside "…" or an unquoted here-document →
`${V}`. Places where no reference can work are refused with a message saying why: after a
backslash, inside `$(( ))` or `${…}`, in a here-document with a quoted delimiter or in its
delimiter. `{% if %}` / `{% for %}` bodies must leave the quoting as they found it, so every
path through the template gives each expression the same context.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from jinja2 import TemplateSyntaxError, nodes, pass_context
from jinja2.runtime import Context

from ktlo.runbook.templating import ENV, TemplateError, template_errors

VAR_PREFIX = "KTLO_ARG_"
_SEPARATORS = frozenset(" \t\n;&|()<>")
_CMD_KINDS = frozenset({"cmd", "sub", "bq"})

# The values of one render: the filters below append to it.
_collected: ContextVar[list[str] | None] = ContextVar("ktlo_shell_values", default=None)


@dataclass(frozen=True)
class _Frame:
    """One level of shell syntax: cmd (top), sub ($( )), bq (`…`), sq, dq, arith, param,
    comment, heredoc."""

    kind: str
    depth: int = 0
    delim: str = ""
    quoted: bool = False
    strip_tabs: bool = False


@dataclass
class _Delim:
    """A here-document delimiter being read after `<<`."""

    strip_tabs: bool = False
    text: str = ""
    quoted: bool = False
    inner: str | None = None
    started: bool = False


class _Scanner:
    """Tracks the shell's quoting context through the literal text of a command."""

    def __init__(self) -> None:
        self.stack: list[_Frame] = [_Frame("cmd")]
        self.escaped = False
        self.word_start = True
        self.pending: list[_Frame] = []
        self.delim: _Delim | None = None
        self.line = ""
        self.line_pure = True

    def state(self) -> tuple[Any, ...]:
        delim = None if self.delim is None else tuple(vars(self.delim).values())
        return (tuple(self.stack), self.escaped, tuple(self.pending), delim)

    def copy(self) -> _Scanner:
        other = _Scanner()
        other.stack, other.pending = list(self.stack), list(self.pending)
        other.delim = None if self.delim is None else replace(self.delim)
        other.escaped, other.word_start = self.escaped, self.word_start
        other.line, other.line_pure = self.line, self.line_pure
        return other

    def merged(self) -> None:
        """After a `{% %}` body: what was at a word or line start is no longer known."""
        self.word_start = False
        self.line_pure = False

    @property
    def top(self) -> _Frame:
        return self.stack[-1]

    def slot(self) -> str:
        """How a `{{ }}` at this point is written into the command, or why it cannot be."""
        top = self.top
        if self.escaped:
            raise ValueError("a {{ }} right after a backslash would lose its quoting")
        if self.delim is not None:
            raise ValueError("a {{ }} cannot be a here-document delimiter")
        if top.kind in ("arith", "param"):
            where = "$(( ))" if top.kind == "arith" else "${...}"
            raise ValueError(
                f"a {{{{ }}}} inside {where} cannot be passed safely; compute it in the template or pass it with env:"
            )
        if top.kind == "heredoc":
            if top.quoted:
                raise ValueError(
                    "a {{ }} in a here-document with a quoted delimiter is not expanded; unquote the delimiter"
                )
            self.line_pure = False
            return "dq"
        self.word_start = False
        if top.kind == "sq":
            return "sq"
        if top.kind == "dq":
            return "dq"
        return "word"

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            i = self._step(text, i)

    def _push(self, frame: _Frame) -> None:
        if self.top.kind == "heredoc":
            self.line_pure = False
        self.stack.append(frame)

    def _dollar(self, text: str, i: int) -> int | None:
        """`$((`, `$(` and `${` open a frame; returns the next index, or None."""
        if text.startswith("$((", i):
            self._push(_Frame("arith"))
            return i + 3
        if text.startswith("$(", i):
            self._push(_Frame("sub"))
            return i + 2
        if text.startswith("${", i):
            self._push(_Frame("param"))
            return i + 2
        return None

    def _step(self, text: str, i: int) -> int:
        ch = text[i]
        if self.delim is not None:
            return self._delimiter(text, i)
        top = self.top
        if self.escaped:
            self.escaped = False
            self.word_start = False
            if top.kind == "heredoc":
                self.line_pure = False
            return i + 1
        if top.kind == "sq":
            if ch == "'":
                self.stack.pop()
            return i + 1
        if top.kind == "comment":
            if ch == "\n":
                self.stack.pop()
                self._newline()
            return i + 1
        if top.kind == "heredoc":
            return self._heredoc(text, i)
        if top.kind == "arith":
            if ch == "(":
                self.stack[-1] = replace(top, depth=top.depth + 1)
            elif ch == ")":
                if top.depth:
                    self.stack[-1] = replace(top, depth=top.depth - 1)
                else:
                    self.stack.pop()
                    return i + 2 if text.startswith("))", i) else i + 1
            return i + 1
        if ch == "\\":
            self.escaped = True
            return i + 1
        if ch == "$":
            nxt = self._dollar(text, i)
            if nxt is not None:
                self.word_start = False
                return nxt
        if top.kind == "dq":
            if ch == '"':
                self.stack.pop()
            elif ch == "`":
                self._push(_Frame("bq"))
            return i + 1
        if top.kind == "param":
            if ch == "}":
                self.stack.pop()
            elif ch in "'\"":
                self._push(_Frame("sq" if ch == "'" else "dq"))
            return i + 1
        return self._command(text, i)

    def _command(self, text: str, i: int) -> int:
        ch, top = text[i], self.top
        if ch == "'":
            self._push(_Frame("sq"))
        elif ch == '"':
            self._push(_Frame("dq"))
        elif ch == "`":
            if top.kind == "bq":
                self.stack.pop()
            else:
                self._push(_Frame("bq"))
        elif ch == "#" and self.word_start:
            self._push(_Frame("comment"))
            return i + 1
        elif text.startswith("<<", i) and not text.startswith("<<<", i):
            self.delim = _Delim()
            self.word_start = True
            return i + 2
        elif ch == "(" and top.kind == "sub":
            self.stack[-1] = replace(top, depth=top.depth + 1)
        elif ch == ")" and top.kind == "sub":
            if top.depth:
                self.stack[-1] = replace(top, depth=top.depth - 1)
            else:
                self.stack.pop()
        if ch == "\n":
            self._newline()
        else:
            self.word_start = ch in _SEPARATORS
        return i + 1

    def _newline(self) -> None:
        self.word_start = True
        if self.pending and self.top.kind in _CMD_KINDS:
            self.stack.extend(reversed(self.pending))
            self.pending = []
            self.line, self.line_pure = "", True

    def _delimiter(self, text: str, i: int) -> int:
        ch, d = text[i], self.delim
        assert d is not None
        if not d.started:
            if ch == "-" and not d.strip_tabs and not d.text:
                d.strip_tabs = True
                return i + 1
            if ch in " \t":
                return i + 1
            d.started = True
        if d.inner is not None:
            if ch == d.inner:
                d.inner = None
            else:
                d.text += ch
            return i + 1
        if ch in "'\"":
            d.inner, d.quoted = ch, True
            return i + 1
        if ch == "\\":
            d.quoted = True
            return i + 1
        if ch in _SEPARATORS or ch in " \t\n":
            frame = _Frame("heredoc", delim=d.text, quoted=d.quoted, strip_tabs=d.strip_tabs)
            self.pending.append(frame)
            self.delim = None
            return i  # the separator itself is read as command text
        d.text += ch
        return i + 1

    def _heredoc(self, text: str, i: int) -> int:
        ch, top = text[i], self.top
        if ch == "\n":
            line = self.line.lstrip("\t") if top.strip_tabs else self.line
            if self.line_pure and line == top.delim:
                self.stack.pop()
                self._newline()
            self.line, self.line_pure = "", True
            return i + 1
        self.line += ch
        if top.quoted:
            return i + 1
        if ch == "\\":
            self.escaped = True
            return i + 1
        if ch == "$":
            nxt = self._dollar(text, i)
            if nxt is not None:
                return nxt
        if ch == "`":
            self._push(_Frame("bq"))
        return i + 1


def _reference(kind: str, value: Any) -> str:
    values = _collected.get()
    if values is None:
        raise TemplateError("the shell quoting filters work only in a shell: true command")
    values.append(str(value))
    name = f"{VAR_PREFIX}{len(values)}"
    if kind == "word":
        return f'"${{{name}}}"'
    if kind == "sq":
        return f"'\"${{{name}}}\"'"
    return f"${{{name}}}"


def _filter(kind: str) -> Any:
    @pass_context  # never folded into a constant when the template is compiled
    def reference(context: Context, value: Any) -> str:
        return _reference(kind, value)

    return reference


for _kind in ("word", "sq", "dq"):
    ENV.filters[f"ktlo_shell_{_kind}"] = _filter(_kind)


def _rewrite(body: list[nodes.Node], scan: _Scanner) -> None:
    """Wrap every output expression in the filter for its shell context (in place)."""
    for node in body:
        if isinstance(node, nodes.Output):
            wrapped: list[nodes.Expr] = []
            for child in node.nodes:
                if isinstance(child, nodes.TemplateData):
                    scan.feed(child.data)
                    wrapped.append(child)
                    continue
                try:
                    kind = scan.slot()
                except ValueError as exc:
                    raise TemplateError(f"line {child.lineno}: {exc}") from None
                wrapped.append(
                    nodes.Filter(
                        child, f"ktlo_shell_{kind}", [], [], None, None, lineno=child.lineno
                    )
                )
            node.nodes = wrapped
        elif isinstance(node, nodes.If | nodes.For):
            bodies = [node.body, node.else_]
            if isinstance(node, nodes.If):
                bodies += [elif_.body for elif_ in node.elif_]
            before = scan.state()
            for part in bodies:
                branch = scan.copy()
                _rewrite(part, branch)
                if branch.state() != before:
                    raise TemplateError(
                        f"line {node.lineno}: a {{% {type(node).__name__.lower()} %}} body must "
                        "close every quote, $( ) and here-document it opens"
                    )
            scan.merged()
        elif isinstance(node, nodes.Assign):
            continue
        else:
            raise TemplateError(
                f"line {node.lineno}: {{% {type(node).__name__.lower()} %}} is not supported in "
                "a shell command (use if, for and set)"
            )


@lru_cache(maxsize=1024)
def compile_shell(template: str) -> Any:
    """The template with every `{{ }}` turned into a variable reference; TemplateError if it cannot be."""
    try:
        ast = ENV.parse(template)
    except TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}") from None
    _rewrite(ast.body, _Scanner())
    return ENV.from_string(ast)


def render_shell(template: str, context: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The command text and the variables it references (name → value)."""
    compiled = compile_shell(template)
    values: list[str] = []
    token = _collected.set(values)
    try:
        with template_errors(repr(template)):
            text = compiled.render(**context)
    finally:
        _collected.reset(token)
    return text, {f"{VAR_PREFIX}{i}": v for i, v in enumerate(values, 1)}
