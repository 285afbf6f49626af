"""HTML from the page models: Jinja2 templates shipped as package files, autoescaped.

The page refreshes itself (`<meta http-equiv="refresh">`) when served; the file written by
`ktlo status --html` does not (reloading a file shows the same file). Styles are inline and
there are no scripts or external resources, so one file is the whole page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from ktlo.app.dashboard import svg
from ktlo.app.dashboard.model import Page, PublicPage

REFRESH_S = 60


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def duration(seconds: float | None) -> str:
    """The largest unit and the next: 3d 4h, 2h 0m, 5m 7s, 42s."""
    if seconds is None:
        return "-"
    left = int(seconds)
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for i, (unit, size) in enumerate(units):
        if left >= size or unit == "s":
            text = f"{left // size}{unit}"
            if unit != "s":
                small, small_size = units[i + 1]
                text += f" {left % size // small_size}{small}"
            return text
    return f"{left}s"


def when(ts: datetime | None) -> str:
    if ts is None:
        return "-"
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("ktlo.app.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(percent=percent, duration=duration, when=when, size=size)
    # The SVG is built from numbers, enum values and dates only: nothing to escape.
    env.globals.update(
        bar=lambda cells: Markup(svg.bar(cells)),  # noqa: S704
        chart=lambda values, unit="ms": Markup(svg.chart(values, unit)),  # noqa: S704
        colours=svg.STATE_COLOURS,
    )
    return env


def operator_html(page: Page, *, refresh: bool = True) -> str:
    template = environment().get_template("dashboard.html.j2")
    return template.render(page=page, refresh=REFRESH_S if refresh else None)


def public_html(page: PublicPage, *, refresh: bool = True) -> str:
    template = environment().get_template("status.html.j2")
    return template.render(page=page, refresh=REFRESH_S if refresh else None)
