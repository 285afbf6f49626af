"""Templates: native values, strict undefined names, the sandbox, and static analysis."""

from __future__ import annotations

import pytest

from ktlo import secrets
from ktlo.runbook.templating import TemplateError, analyse, render


def test_full_expression_keeps_its_type() -> None:
    assert render("{{ params.n }}", {"params": {"n": 7}}) == 7
    assert render("{{ params.n < 3 }}", {"params": {"n": 7}}) is False
    assert render({"a": ["{{ params.n * 2 }}"]}, {"params": {"n": 2}}) == {"a": [4]}


def test_mixed_text_renders_to_a_string() -> None:
    assert render("n={{ params.n }}!", {"params": {"n": 7}}) == "n=7!"
    assert render("plain", {}) == "plain"


def test_undefined_names_fail_loudly() -> None:
    with pytest.raises(TemplateError, match="nope"):
        render("{{ params.nope }}", {"params": {}})
    with pytest.raises(TemplateError):
        render("x {{ missing }}", {})


def test_sandbox_blocks_python_internals() -> None:
    with pytest.raises(TemplateError):
        render("{{ params.__class__.__mro__ }}", {"params": {}})
    with pytest.raises(TemplateError):
        render("{{ ''.__class__.__subclasses__() }}", {})


def test_analysis_finds_references_and_secrets() -> None:
    found = analyse(
        "{{ steps['a-b'].output.x }} {{ params.p }} {{ secret('db') }} {% for i in range(3) %}{{ i }}{% endfor %}"
    )
    chains = {r.chain for r in found.references}
    assert ("steps", "a-b", "output", "x") in chains
    assert ("params", "p") in chains
    assert not any(c[0] == "i" for c in chains)
    assert found.secrets == ("db",)


def test_redaction_covers_encoded_forms() -> None:
    secrets.register("p@ss word/1")
    text = "dsn=postgresql://u:p%40ss%20word%2F1@h/db raw=p@ss word/1 plus=p%40ss+word%2F1"
    assert "p@ss" not in secrets.redact(text)
    assert "p%40ss" not in secrets.redact(text)
    assert secrets.redact({"k": ["x p@ss word/1 y"]}) == {"k": ["x *** y"]}
