"""How a step input field wants its templates rendered, declared by the step's input model.

The declarations are part of the step contract (a step type names them in
`StepInput.renderings()`); `ktlo.runbook.rendering` does the rendering and the checks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AsValue:
    """The default: `"{{ x }}"` alone keeps its type, other text renders to a string."""


@dataclass(frozen=True)
class AsWords:
    """An argv given as one string: split into words first, then each word rendered alone."""


@dataclass(frozen=True)
class AsShell:
    """Shell source: `{{ }}` values go into the mapping field `variables` as env variables."""

    variables: str


@dataclass(frozen=True)
class AsUrl:
    """A URL: a host taken from untrusted data must be in the list field `allowed_hosts`."""

    allowed_hosts: str


Rendering = AsValue | AsWords | AsShell | AsUrl
