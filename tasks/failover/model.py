"""The cluster model: `clusters.yaml` (SPEC §10), loaded with `path:line` problems.

Per-node `settings` are the node's own configuration (port, cluster_name, ...). They live here,
outside the data directory, because `pg_rewind` copies the source's postgresql.conf and
postgresql.auto.conf: a rejoin writes them back after every rewind or base backup.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ktlo.errors import KtloError, RunbookInvalid
from ktlo.runbook.problems import pydantic_problems
from ktlo.runbook.yamlsrc import load_yaml
from ktlo.settings import get_settings
from tasks.failover.routers.base import RouterSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeConfig(_Strict):
    dsn: str = Field(description="libpq connection string of this node (no secrets: use .pgpass)")
    host: str = Field(default="here", description="inventory host that runs this node")
    data_dir: str
    bin_dir: str = "/usr/lib/postgresql/15/bin"
    run_as: str = "postgres"
    settings: dict[str, str] = Field(
        default_factory=dict, description="the node's own settings, re-applied after a rewind"
    )


class RouterConfig(RouterSpec):
    dsn: str | None = Field(
        default=None, description="how clients reach the primary through the router (write probe)"
    )
    server_names: dict[str, str] = Field(
        default_factory=dict, description="node → server name in the backend (default: same)"
    )

    def server(self, node: str) -> str:
        return self.server_names.get(node, node)


class FenceCommand(_Strict):
    """A user command that makes a node unable to take writes (power off, cloud API)."""

    command: list[str] = Field(min_length=1, description="argv; {node} and {host} are replaced")
    host: str = Field(default="here", description="inventory host that runs it")
    timeout_s: float = Field(default=30, gt=0)


class SyncPolicy(StrEnum):
    STRICT = "strict"  # writes block while no synchronous standby streams
    DEGRADE = "degrade"  # synchronous replication dropped after degrade_after_s (audited)


class ClusterConfig(_Strict):
    kind: Literal["postgres"] = "postgres"
    synchronous: bool = False
    sync_policy: SyncPolicy = SyncPolicy.DEGRADE
    degrade_after_s: float = Field(
        default=10, gt=0, description="with degrade: no standby this long"
    )
    max_lag_bytes: int = Field(default=16 * 2**20, ge=0)
    nodes: dict[str, NodeConfig] = Field(min_length=2)
    router: RouterConfig | None = None
    fence_command: FenceCommand | None = None
    connect_timeout_s: float = Field(default=1.0, gt=0, le=30)

    @model_validator(mode="after")
    def _names(self) -> ClusterConfig:
        for name in self.nodes:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"node name '{name}': letters, digits, '-' and '_' only")
        return self


class ClustersFile(_Strict):
    clusters: dict[str, ClusterConfig] = Field(default_factory=dict)


def clusters_path() -> Path:
    return get_settings().clusters_path


def load_clusters(path: Path | None = None) -> ClustersFile:
    """Parse and validate clusters.yaml; every problem is `path:line: message`."""
    path = path or clusters_path()
    if not path.exists():
        raise KtloError(
            f"{path}: no clusters file (set KTLO_CLUSTERS or create it; see docs/failover.md)"
        )
    source = load_yaml(path)
    try:
        return ClustersFile.model_validate(source.data or {})
    except ValidationError as exc:
        raise RunbookInvalid(pydantic_problems(source, exc, ClustersFile)) from None


def get_cluster(name: str, path: Path | None = None) -> ClusterConfig:
    clusters = load_clusters(path).clusters
    if name not in clusters:
        known = ", ".join(sorted(clusters)) or "none"
        raise KtloError(f"cluster '{name}' is not in {path or clusters_path()} (known: {known})")
    return clusters[name]
