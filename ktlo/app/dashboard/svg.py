"""Inline SVG: the uptime bar, the response-time chart, the size trend and the badges.

Built as strings here, not in the template: a page for 1,000 checks has 24,000 bar cells,
and a Jinja loop per cell is several times slower than one join.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from html import escape

from ktlo.app.dashboard.model import Bar, CellState, CheckView

COLOURS = {
    CellState.OK: "#2da44e",
    CellState.DEGRADED: "#d4a72c",
    CellState.FAILING: "#cf222e",
    CellState.MAINTENANCE: "#3e7bfa",
    CellState.NONE: "#d0d7de",
}
STATE_COLOURS = {
    CheckView.OK: COLOURS[CellState.OK],
    CheckView.DEGRADED: COLOURS[CellState.DEGRADED],
    CheckView.FAILING: COLOURS[CellState.FAILING],
    CheckView.MAINTENANCE: COLOURS[CellState.MAINTENANCE],
    CheckView.SUPPRESSED: "#8c959f",
}
CELL_W, CELL_GAP, BAR_H = 8, 2, 22


@lru_cache(maxsize=64)
def _cells(start: datetime, span_s: int, n: int) -> tuple[tuple[str, str], ...]:
    """Per cell: its x attribute and its time label (the same for every check of a page)."""
    step = CELL_W + CELL_GAP
    return tuple(
        (f'x="{i * step}"', f"{start + timedelta(seconds=i * span_s):%Y-%m-%d %H:%M} UTC")
        for i in range(n)
    )


def bar(b: Bar) -> str:
    """One rect per interval, coloured by its worst result; the tooltip says what happened."""
    width = len(b.states) * (CELL_W + CELL_GAP) - CELL_GAP
    parts = [
        f'<svg class="bar" viewBox="0 0 {width} {BAR_H}" width="{width}" height="{BAR_H}" '
        f'role="img" aria-label="uptime per hour" preserveAspectRatio="none">'
    ]
    cells = _cells(b.start, b.span_s, len(b.states))
    for (x, label), state, up, counted in zip(cells, b.states, b.up, b.counted, strict=True):
        count = f", {up}/{counted} up" if counted else ""
        parts.append(
            f'<rect class="cell {state.value}" {x} width="{CELL_W}" height="{BAR_H}" '
            f'fill="{COLOURS[state]}"><title>{label}: {state.value}{count}</title></rect>'
        )
    parts.append("</svg>")
    return "".join(parts)


def chart(values: list[float | None], unit: str = "ms", width: int = 238, height: int = 40) -> str:
    """A line of the values (gaps where there are none), scaled to the largest."""
    top = max((v for v in values if v is not None), default=0.0)
    if not top:
        return '<svg class="chart" width="0" height="0"></svg>'
    step = width / max(len(values) - 1, 1)
    lines, points = [], []
    for i, v in enumerate([*values, None]):
        if v is not None:
            points.append(f"{i * step:.1f},{height - 2 - (height - 4) * v / top:.1f}")
        elif points:
            lines.append(
                f'<polyline points="{" ".join(points)}" fill="none" stroke="#0969da" '
                'stroke-width="1.5"/>'
            )
            if len(points) == 1:  # a lone value: a dot
                x, y = points[0].split(",")
                lines.append(f'<circle cx="{x}" cy="{y}" r="2" fill="#0969da"/>')
            points = []
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="response time per hour, max {top:.0f} {unit}">'
        f"<title>max {top:.0f} {unit}</title>{''.join(lines)}</svg>"
    )


def badge(label: str, message: str, colour: str) -> str:
    """A shields.io-style flat badge, as Gatus serves them (text width estimated)."""

    def text_width(s: str) -> int:
        return int(len(s) * 6.5) + 10

    lw, mw = text_width(label), text_width(message)
    total = lw + mw
    label, message = escape(label), escape(message)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" '
        f'aria-label="{label}: {message}"><title>{label}: {message}</title>'
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" '
        'stop-opacity=".1"/><stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{total}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{lw}" height="20" fill="#555"/>'
        f'<rect x="{lw}" width="{mw}" height="20" fill="{colour}"/>'
        f'<rect width="{total}" height="20" fill="url(#s)"/></g>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" '
        'font-size="11">'
        f'<text x="{lw / 2:.1f}" y="14">{label}</text>'
        f'<text x="{lw + mw / 2:.1f}" y="14">{message}</text></g></svg>'
    )


def uptime_colour(pct: float | None) -> str:
    if pct is None:
        return COLOURS[CellState.NONE]
    if pct >= 99.0:
        return COLOURS[CellState.OK]
    return COLOURS[CellState.DEGRADED] if pct >= 95.0 else COLOURS[CellState.FAILING]
