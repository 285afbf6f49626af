"""Shared vocabulary of the backup package: ids, destinations, manifests, inputs and outputs."""

from __future__ import annotations

import functools
import hashlib
import re
import secrets as _random
import shutil
import subprocess
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ktlo.errors import KtloError
from ktlo.steps.registry import StepInput, StepOutput

MANIFEST_FORMAT = "ktlo-backup/1"
LATEST = "latest"


class BackupError(KtloError):
    """A backup, verification or restore failed; the message names the backup or the source."""


def occupied(target: str) -> BackupError:
    """The error of a restore into a non-empty target without `overwrite`."""
    return BackupError(
        f"target {target} is not empty (overwrite: true, or ktlo restore --overwrite, replaces it)"
    )


def new_backup_id(created: datetime) -> str:
    """Sortable and readable: `20250102T030405Z-1a2b3c4d`."""
    return f"{created:%Y%m%dT%H%M%SZ}-{_random.token_hex(4)}"


def source_slug(source: str) -> str:
    """A directory/key-safe name for a source, unique thanks to a short hash."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", source).strip("-.")[:80] or "source"
    return f"{readable}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"


class DestinationSpec(BaseModel):
    """Where backups go. Only secret *names* are kept here: the spec is stored in the catalog."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        default=None,
        description="a path, file:///path or s3://bucket/prefix (default: KTLO_HOME/backups)",
    )
    endpoint_url: str | None = Field(default=None, description="S3-compatible endpoint")
    region: str | None = None
    access_key_id_secret: str | None = Field(
        default=None, description="secret holding the S3 access key id (else boto3's defaults)"
    )
    secret_access_key_secret: str | None = Field(
        default=None, description="secret holding the S3 secret access key"
    )
    key_secret: str | None = Field(
        default=None, description="secret holding the encryption key; unset: not encrypted"
    )

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _pairs(self) -> DestinationSpec:
        if (self.access_key_id_secret is None) != (self.secret_access_key_secret is None):
            raise ValueError("give both access_key_id_secret and secret_access_key_secret, or none")
        return self


DestinationInput = str | DestinationSpec | None


def as_spec(value: DestinationInput) -> DestinationSpec:
    if isinstance(value, DestinationSpec):
        return value
    return DestinationSpec(url=value)


class Manifest(BaseModel):
    """The JSON document stored next to each object: enough to restore without the catalog."""

    format: Literal["ktlo-backup/1"] = "ktlo-backup/1"
    id: str
    source: str
    kind: str
    created: datetime
    object: str
    size: int
    sha256: str
    input_bytes: int
    compression: str
    encryption: dict[str, Any] | None = None
    tool_versions: dict[str, str] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)


class BackupInput(StepInput):
    source: str | None = Field(
        default=None, description="catalog name of what is backed up (default: derived)"
    )
    destination: DestinationInput = Field(default=None, description="where the backup goes")


class BackupOutput(StepOutput):
    backup_id: str
    source: str
    kind: str
    location: str
    size: int
    sha256: str
    input_bytes: int
    encrypted: bool
    duration_ms: float


def summarize_backup(out: BackupOutput) -> str:
    return f"{out.backup_id}: {human_bytes(out.input_bytes)} → {human_bytes(out.size)} at {out.location}"


class BackupRef(StepInput):
    """Which backup a restore or a verification is about."""

    backup_id: str = Field(description="a backup id (or a unique prefix), or 'latest'")
    source: str | None = Field(default=None, description="with backup_id 'latest': which source")

    @model_validator(mode="after")
    def _latest_needs_source(self) -> BackupRef:
        if self.backup_id == LATEST and not self.source:
            raise ValueError("backup_id 'latest' needs 'source'")
        return self


class RestoreInput(BackupRef):
    overwrite: bool = Field(default=False, description="replace a non-empty target")


class RestoreOutput(StepOutput):
    backup_id: str
    source: str
    target: str
    bytes: int = Field(description="bytes of restored data (uncompressed, decrypted)")
    sha256: str = Field(description="sha256 of the stored object, checked while restoring")
    checks: dict[str, Any] = Field(default_factory=dict)
    duration_ms: float


def summarize_restore(out: RestoreOutput) -> str:
    return f"{out.backup_id} → {out.target} ({human_bytes(out.bytes)})"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@functools.cache
def tool_version(tool: str) -> str:
    """First line of `tool --version` (recorded in manifests); empty if the tool is missing."""
    path = shutil.which(tool)
    if path is None:
        return ""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (out.stdout.strip().splitlines() or [""])[0]


def require_tool(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BackupError(f"'{tool}' is not installed (or not on PATH)")
    return path
