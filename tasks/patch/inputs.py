"""Inputs shared by `patch.scan` and `patch.rollout`: which hosts, which providers, the baseline."""

from __future__ import annotations

from pydantic import Field

from ktlo.steps.registry import StepInput
from tasks.patch.baseline import Baseline
from tasks.patch.providers import AptProvider, Provider


def _apt_only() -> list[Provider]:
    return [AptProvider()]


class PatchCommon(StepInput):
    hosts: str = Field(description="host selector: all, a group, a host, or a comma list")
    providers: list[Provider] = Field(
        default_factory=_apt_only, min_length=1, description="default: apt"
    )
    baseline: Baseline = Field(default_factory=Baseline)
    root: str | None = Field(
        default=None,
        description="the host's filesystem root for reboot-required; default vars.root or /",
    )
    command_timeout_s: float = Field(default=120, gt=0, description="every remote command")
    connect_timeout_s: float | None = Field(default=None, gt=0)
    max_handshakes: int = Field(default=16, ge=1, description="SSH handshakes at once")
