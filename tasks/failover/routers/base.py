"""What a router (the thing clients connect through) must offer, and the kind registry.

A router kind is one module in this package: a subclass of `Router` with a `kind` name and
`register(TheRouter)`. Routers know servers by name and nothing about PostgreSQL, so the
`router.*` steps serve any active/standby service.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from ktlo.errors import KtloError


class RouterAction(StrEnum):
    DISABLE = "disable"  # no new or existing traffic (maintenance)
    ENABLE = "enable"  # back under health checks
    DRAIN = "drain"  # existing sessions stay, no new ones
    UP = "up"  # tell the router the server is healthy now (next check confirms it)


class RouterSpec(BaseModel):
    """Where the router is; the same fields for every kind (kind-specific ones are optional)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(default="haproxy", description="a registered router kind")
    socket: str = Field(description="the router's admin endpoint (HAProxy: admin stats socket)")
    backend: str = Field(default="pg", description="the group of servers (HAProxy backend)")
    timeout_s: float = Field(default=2.0, gt=0, le=60)


class Router(ABC):
    kind: str = ""

    def __init__(self, spec: RouterSpec):
        self.spec = spec

    @abstractmethod
    async def states(self) -> dict[str, str]:
        """Server name → state as the router reports it (UP, DOWN, MAINT, DRAIN, ...)."""

    @abstractmethod
    async def apply(self, server: str, action: RouterAction) -> None:
        """Do `action` to `server`; raises KtloError when the router refuses."""


_KINDS: dict[str, type[Router]] = {}


def register(cls: type[Router]) -> type[Router]:
    _KINDS[cls.kind] = cls
    return cls


def kinds() -> list[str]:
    return sorted(_KINDS)


def router_for(spec: RouterSpec) -> Router:
    cls = _KINDS.get(spec.kind)
    if cls is None:
        raise KtloError(f"router kind '{spec.kind}' is unknown (known: {', '.join(kinds())})")
    return cls(spec)
