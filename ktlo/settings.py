"""Environment contract (SPEC §6): every KTLO_* variable is read here and nowhere else."""

from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KTLO_", extra="ignore")

    home: Path = Field(default=Path(".ktlo"), description="state directory of the embedded default")
    database_url: str | None = Field(default=None, description="ktlo store; SQLite under home")
    runbooks: Path = Field(default=Path("runbooks"), description="where runbooks are loaded from")
    webhook_token: SecretStr | None = None
    dashboard_token: SecretStr | None = Field(
        default=None, description="read-only token for /dashboard (the webhook token works too)"
    )
    webhook_tolerance_s: int = Field(
        default=300, ge=1, description="how old (or how far ahead) a signature's t= may be"
    )
    webhook_header_timeout_s: float = Field(
        default=10.0, gt=0, description="a connection must send its request headers this fast"
    )
    webhook_body_timeout_s: float = Field(
        default=30.0, gt=0, description="a request must send its whole body this fast"
    )
    webhook_max_connections: int = Field(
        default=512, ge=2, description="open connections to the receiver at most"
    )
    channels: str | None = Field(
        default=None,
        description="named notification channels: JSON object or 'name=url;name=url'",
    )
    channels_file: Path | None = Field(
        default=None, description="YAML/JSON file of named channels (default HOME/channels.yaml)"
    )
    audit_key: SecretStr | None = Field(
        default=None, description="optional HMAC key for the audit chain (else plain SHA-256)"
    )
    audit_anchor: Path | None = Field(
        default=None, description="append-only file of audit-chain heads (default HOME/audit.anchor)"
    )
    inventory: Path | None = Field(
        default=None, description="hosts inventory YAML (default inventory.yaml beside RUNBOOKS)"
    )
    clusters: Path | None = Field(
        default=None, description="failover clusters YAML (default clusters.yaml beside RUNBOOKS)"
    )
    plans: Path | None = Field(
        default=None, description="DR plans directory (default plans/ beside RUNBOOKS)"
    )

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @cached_property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home_dir / 'ktlo.db'}"

    @cached_property
    def runbooks_dir(self) -> Path:
        return self.runbooks.expanduser().resolve()

    @cached_property
    def plans_dir(self) -> Path:
        if self.plans is not None:
            return self.plans.expanduser().resolve()
        return self.runbooks_dir.parent / "plans"

    @cached_property
    def inventory_path(self) -> Path:
        if self.inventory is not None:
            return self.inventory.expanduser().resolve()
        return self.runbooks_dir.parent / "inventory.yaml"

    @cached_property
    def clusters_path(self) -> Path:
        if self.clusters is not None:
            return self.clusters.expanduser().resolve()
        return self.runbooks_dir.parent / "clusters.yaml"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reload_settings() -> Settings:
    """Forget cached settings (tests and the CLI change the environment at start-up)."""
    get_settings.cache_clear()
    return get_settings()
