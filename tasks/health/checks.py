"""What a runbook declares: the `health.sweep` input and one pydantic model per check type.

Checks are a discriminated union on `type`; unknown keys are errors. Validation errors are
re-located onto the YAML (pydantic puts the union's tag in an error's location, which is
not a key of the runbook) and say which keys the check type takes.
"""

from __future__ import annotations

import difflib
from abc import abstractmethod
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ktlo.steps.registry import StepInput
from tasks.health.windows import WINDOW_TAGS, Window

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.:/@-]*$"
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
RecordType = Literal["A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "CAA"]


class CheckSettings(BaseModel):
    """Fields every check has (and `defaults:` may set for all checks of a sweep)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    timeout_s: float = Field(default=10, gt=0, le=600, description="the probe's time budget")
    failure_threshold: int = Field(default=3, ge=1, description="failures in a row → FAILING")
    success_threshold: int = Field(default=2, ge=1, description="successes in a row → OK")
    remind_every_s: float | None = Field(default=None, gt=0, description="reminders while FAILING")
    send_on_resolved: bool = True
    alert: list[str] = Field(default_factory=list, description="apprise URLs or channel names")
    maintenance: list[Window] = Field(default_factory=list)


class CheckBase(CheckSettings):
    name: str = Field(pattern=NAME_PATTERN, max_length=200)
    description: str | None = None
    conditions: list[str] = Field(
        default_factory=list, description="critical: any failing → the check fails"
    )
    warn: list[str] = Field(
        default_factory=list, description="warnings: only these failing → DEGRADED"
    )
    depends_on: list[str] = Field(default_factory=list, description="checks of the same sweep")
    remediate: str | None = Field(
        default=None, description="runbook started (once) when the check goes FAILING"
    )

    DEFAULT_CONDITIONS: ClassVar[tuple[str, ...]] = ()

    def critical(self) -> list[str]:
        return self.conditions or list(self.DEFAULT_CONDITIONS)

    @abstractmethod
    def target(self) -> str:
        """Where the check looks, without credentials (shown in results and notifications)."""


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname:
        return url.split("@")[-1]
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class HttpCheck(CheckBase):
    type: Literal["http"]
    url: str
    method: Method = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    json_body: Any = Field(default=None, alias="json")
    verify_tls: bool = True
    follow_redirects: bool = True

    DEFAULT_CONDITIONS = ("status >= 200", "status < 300")

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if "{{" not in value and not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return value

    def target(self) -> str:
        return f"{self.method} {_strip_credentials(self.url)}"


class TcpCheck(CheckBase):
    type: Literal["tcp"]
    host: str
    port: int = Field(ge=1, le=65535)

    DEFAULT_CONDITIONS = ("connected == true",)

    def target(self) -> str:
        return f"{self.host}:{self.port}"


class DnsCheck(CheckBase):
    type: Literal["dns"]
    query: str = Field(description="the name to resolve")
    record: RecordType = "A"
    server: str | None = Field(default=None, description="default: the system's first resolver")
    port: int = Field(default=53, ge=1, le=65535)
    expect: list[str] | None = Field(
        default=None, description="the exact set of answers (adds a condition)"
    )

    DEFAULT_CONDITIONS = ('rcode == "NOERROR"',)

    def critical(self) -> list[str]:
        out = super().critical()
        if self.expect is not None:
            import json

            out = [*out, f"answers == {json.dumps(sorted(self.expect))}"]
        return out

    def target(self) -> str:
        where = f" @{self.server}:{self.port}" if self.server else ""
        return f"{self.record} {self.query}{where}"


class TlsCheck(CheckBase):
    type: Literal["tls"]
    host: str
    port: int = Field(default=443, ge=1, le=65535)
    server_name: str | None = Field(default=None, description="SNI; default: host")

    DEFAULT_CONDITIONS = ("cert_days > 14",)

    def target(self) -> str:
        return f"tls://{self.host}:{self.port}"


class PostgresCheck(CheckBase):
    type: Literal["postgres"]
    dsn: str = Field(description="libpq URL or key=value string; use secret() for passwords")
    query: str | None = None

    DEFAULT_CONDITIONS = ("connected == true",)

    def target(self) -> str:
        if "://" in self.dsn:
            return _strip_credentials(self.dsn)
        from psycopg.conninfo import conninfo_to_dict

        try:
            info = conninfo_to_dict(self.dsn)
        except Exception:
            return "postgres"
        return (
            f"postgresql://{info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
        )


class MysqlCheck(CheckBase):
    type: Literal["mysql"]
    dsn: str = Field(description="mysql://user:password@host:port/database")
    query: str | None = None

    DEFAULT_CONDITIONS = ("connected == true",)

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: str) -> str:
        if "{{" not in value and not value.startswith(("mysql://", "mariadb://")):
            raise ValueError("dsn must look like mysql://user:password@host:3306/database")
        return value

    def target(self) -> str:
        return _strip_credentials(self.dsn)


class RedisCheck(CheckBase):
    type: Literal["redis"]
    url: str = Field(description="redis://[:password@]host:port/db or rediss://")
    command: list[str] = Field(default_factory=lambda: ["PING"], min_length=1)

    DEFAULT_CONDITIONS = ("connected == true",)

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return value.split() if isinstance(value, str) else value

    def target(self) -> str:
        return _strip_credentials(self.url)


class DiskCheck(CheckBase):
    type: Literal["disk"]
    path: str = "/"

    DEFAULT_CONDITIONS = ("used_percent < 90",)

    def target(self) -> str:
        return self.path


class CommandCheck(CheckBase):
    type: Literal["command"]
    command: str | list[str]
    shell: bool = False
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    DEFAULT_CONDITIONS = ("exit_code == 0",)

    @model_validator(mode="after")
    def _shape(self) -> CommandCheck:
        if self.shell and not isinstance(self.command, str):
            raise ValueError("shell: true needs the command as a string")
        if not self.command:
            raise ValueError("command is empty")
        return self

    def argv(self) -> list[str]:
        import shlex

        if self.shell:
            assert isinstance(self.command, str)
            return ["/bin/sh", "-c", self.command]
        return shlex.split(self.command) if isinstance(self.command, str) else list(self.command)

    def target(self) -> str:
        return self.command if isinstance(self.command, str) else " ".join(self.command)


CHECK_TYPES: dict[str, type[CheckBase]] = {
    "http": HttpCheck,
    "tcp": TcpCheck,
    "dns": DnsCheck,
    "tls": TlsCheck,
    "postgres": PostgresCheck,
    "mysql": MysqlCheck,
    "redis": RedisCheck,
    "disk": DiskCheck,
    "command": CommandCheck,
}
TAGGED: dict[str, type[BaseModel]] = {**CHECK_TYPES, **WINDOW_TAGS}

AnyCheck = (
    HttpCheck
    | TcpCheck
    | DnsCheck
    | TlsCheck
    | PostgresCheck
    | MysqlCheck
    | RedisCheck
    | DiskCheck
    | CommandCheck
)


def _relocated(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Validate, then drop union tags from error locations and explain unknown keys/types."""
    try:
        return handler(value)
    except ValidationError as exc:
        errors = [_relocate(value, err, None) for err in exc.errors()]
        raise ValidationError.from_exception_data(exc.title, errors) from None  # type: ignore[arg-type]


def _relocated_defaults(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError as exc:
        errors = [_relocate(value, err, CheckSettings) for err in exc.errors()]
        raise ValidationError.from_exception_data(exc.title, errors) from None  # type: ignore[arg-type]


def _relocate(data: Any, err: Any, model: type[BaseModel] | None) -> dict[str, Any]:
    """One error, located on the data the operator wrote (tags removed, messages explained)."""
    loc: list[str | int] = []
    node = data
    for part in err["loc"]:
        at_union = not loc or (
            len(loc) >= 2 and loc[-2] == "maintenance" and isinstance(loc[-1], int)
        )
        if at_union and isinstance(part, str) and part in TAGGED and model is not TAGGED[part]:
            model = TAGGED[part]  # a union tag: tells which model, is not a key
            continue
        loc.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    kind, message = err["type"], err["msg"]
    if kind == "extra_forbidden" and loc:
        keys = [f.alias or n for n, f in (model or CheckBase).model_fields.items()]
        hint = difflib.get_close_matches(str(loc[-1]), keys, n=1)
        kind = "unknown_key"
        message = f"unknown key for {_what(model)}" + (
            f" (did you mean '{hint[0]}'?)" if hint else f" (keys: {', '.join(keys)})"
        )
    elif kind == "union_tag_invalid":
        tag = str((err.get("ctx") or {}).get("tag", ""))
        hint = difflib.get_close_matches(tag, list(CHECK_TYPES), n=1)
        kind, loc = "unknown_check_type", [*loc, "type"]
        message = f"unknown check type '{tag}'" + (
            f" (did you mean '{hint[0]}'?)" if hint else f" (types: {', '.join(CHECK_TYPES)})"
        )
    elif kind == "union_tag_not_found":
        kind, loc = "missing_check_type", [*loc, "type"]
        message = f"required: the check type ({', '.join(CHECK_TYPES)})"
    return {
        "type": PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}")),
        "loc": tuple(loc),
        "input": err.get("input"),
    }


def _what(model: type[BaseModel] | None) -> str:
    if model is None:
        return "a check"
    if model is CheckSettings:
        return "defaults"
    if model in WINDOW_TAGS.values():
        return "a maintenance window"
    kind = next((k for k, v in CHECK_TYPES.items() if v is model), "?")
    return f"{'an' if kind[0] in 'aeiouh' else 'a'} {kind} check"


Check = Annotated[AnyCheck, Field(discriminator="type"), WrapValidator(_relocated)]


class SweepInput(StepInput):
    checks: list[Check] = Field(min_length=1)
    concurrency: int = Field(default=100, ge=1, le=2000, description="probes in flight at once")
    connections_per_host: int = Field(
        default=10, ge=1, le=200, description="HTTP connections kept open to one origin"
    )
    defaults: Annotated[CheckSettings | None, WrapValidator(_relocated_defaults)] = Field(
        default=None, description="common fields applied to every check that does not set them"
    )
    fail_on_failure: bool = Field(
        default=False, description="fail the step when a check's critical conditions fail"
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("defaults"), dict):
            return data
        try:
            CheckSettings.model_validate(data["defaults"])
        except ValidationError:
            return data  # reported at `defaults`, not repeated at every check
        defaults = dict(data["defaults"])
        checks = data.get("checks")
        if isinstance(checks, list):
            checks = [{**defaults, **c} if isinstance(c, dict) else c for c in checks]
        return {**data, "checks": checks}
