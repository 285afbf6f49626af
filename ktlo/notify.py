"""Notifications through apprise, to URLs or to channels named in settings.

Channel URLs usually embed tokens, so they are treated as secrets: runbooks name a channel
(`oncall`), settings map it to URLs, and messages about delivery name the channel only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ktlo import secrets
from ktlo.errors import KtloError
from ktlo.settings import get_settings

log = logging.getLogger("ktlo.notify")


class ChannelError(KtloError):
    pass


@dataclass(frozen=True)
class Target:
    label: str  # what messages may show: the channel name, or the URL's scheme
    url: str


@dataclass
class Delivery:
    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def _parse_inline(text: str) -> dict[str, Any]:
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ChannelError(f"KTLO_CHANNELS is not valid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise ChannelError("KTLO_CHANNELS must be a JSON object of name → URL(s)")
        return data
    out: dict[str, Any] = {}
    for item in text.split(";"):
        name, sep, url = item.partition("=")
        if not sep or not name.strip():
            raise ChannelError("KTLO_CHANNELS: expected 'name=url;name=url' or a JSON object")
        out.setdefault(name.strip(), []).append(url.strip())
    return out


MAX_CHANNELS_FILE_BYTES = 1024 * 1024


def _safe_yaml(path: Path) -> Any:
    """The channels file, refused when it is too large or uses aliases (an alias bomb of a
    few hundred bytes expands to gigabytes), as `ktlo.runbook.yamlsrc` does for runbooks."""
    if path.stat().st_size > MAX_CHANNELS_FILE_BYTES:
        raise ChannelError(f"{path}: larger than {MAX_CHANNELS_FILE_BYTES // 1024} KiB")
    text = path.read_text(encoding="utf-8")
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            line = event.start_mark.line + 1 if event.start_mark else 1
            raise ChannelError(f"{path}:{line}: YAML aliases are not allowed")
    return yaml.safe_load(text) or {}


def channels() -> dict[str, list[str]]:
    """Named channels from `KTLO_CHANNELS` and the channels file (the environment wins)."""
    settings = get_settings()
    merged: dict[str, Any] = {}
    path: Path = settings.channels_file or settings.home_dir / "channels.yaml"
    if path.is_file():
        try:
            data = _safe_yaml(path)
        except yaml.YAMLError as exc:
            raise ChannelError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ChannelError(f"{path}: expected a mapping of channel name → URL(s)")
        merged.update(data)
    if settings.channels:
        merged.update(_parse_inline(settings.channels))
    result: dict[str, list[str]] = {}
    for name, urls in merged.items():
        url_list = [urls] if isinstance(urls, str) else list(urls or [])
        for url in url_list:
            secrets.register(str(url))
        result[str(name)] = [str(u) for u in url_list]
    return result


def resolve_channels(names_or_urls: list[str]) -> list[Target]:
    known: dict[str, list[str]] | None = None
    targets: list[Target] = []
    for entry in names_or_urls:
        if "://" in entry:
            targets.append(Target(label=_url_label(entry), url=entry))
            continue
        if known is None:
            known = channels()
        if entry not in known:
            names = ", ".join(sorted(known)) or "none defined"
            raise ChannelError(
                f"unknown notification channel '{entry}' (define it in KTLO_CHANNELS or "
                f"{get_settings().home_dir / 'channels.yaml'}; known: {names})"
            )
        targets.extend(Target(label=entry, url=url) for url in known[entry])
    return targets


def _url_label(url: str) -> str:
    """Scheme and host only: URLs written in runbooks may still carry tokens in the path."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def send(to: list[str], title: str, body: str) -> Delivery:
    """Deliver one message to every target; one failing target does not stop the others."""
    import apprise

    delivery = Delivery()
    title, body = secrets.redact(title), secrets.redact(body)
    for target in resolve_channels(to):
        client = apprise.Apprise()
        if not client.add(target.url):
            raise ChannelError(f"not a valid apprise URL: {secrets.redact(target.label)}")
        if client.notify(title=title, body=body):
            delivery.sent.append(target.label)
        else:
            log.warning("notification to %s failed", target.label)
            delivery.failed.append(target.label)
    return delivery
