"""Drill reports: the JSON document (SPEC §10 shape plus evidence), Markdown for the Prefect
artifact, and a self-contained HTML page with an inline-SVG timeline for auditors.

The HTML has no external resources (no scripts, fonts or stylesheets to fetch), so it can be
archived as evidence and opened anywhere.
"""

from __future__ import annotations

from datetime import datetime
from html import escape
from typing import Any

from ktlo.store.models import iso
from tasks.dr.drill import ServiceResult
from tasks.dr.plan import Plan


def document(
    *,
    plan: Plan,
    run_id: str,
    verdict: str,
    services: list[ServiceResult],
    notes: list[str],
    started: datetime,
    finished: datetime,
    started_by: str,
    flow_run_url: str | None,
    mode: str = "drill",
) -> dict[str, Any]:
    return {
        "mode": mode,
        "plan": plan.name,
        "plan_hash": plan.content_hash,
        "verdict": verdict,
        "services": [s.model_dump(mode="json") for s in services],
        "run_id": run_id,
        "started_at": iso(started),
        "finished_at": iso(finished),
        "duration_s": round((finished - started).total_seconds(), 3),
        "started_by": started_by,
        "flow_run_url": flow_run_url,
        "notes": notes,
        "audit": {
            "actions": [f"dr.{mode}.start"]
            + (["dr.cleanup"] if mode == "drill" else [])
            + [f"dr.{mode}.finish"],
            "run_id": run_id,
        },
    }


def title(doc: dict[str, Any]) -> str:
    """'DR drill' or, for `ktlo dr execute`, 'DR recovery' (the same report otherwise)."""
    return "DR recovery" if doc.get("mode") == "execute" else "DR drill"


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _met(achieved: float | None, target: float) -> str:
    if achieved is None:
        return "—"
    return "met" if achieved <= target else "MISSED"


def table_rows(doc: dict[str, Any]) -> list[list[str]]:
    """One row per service: the cells both the Markdown and the HTML table show."""
    rows = []
    for s in doc["services"]:
        rows.append(
            [
                s["name"],
                str(s["wave"]),
                _num(s["rto_target_s"], 0),
                _num(s["rto_achieved_s"]),
                _met(s["rto_achieved_s"], s["rto_target_s"]),
                _num(s["rpo_target_s"], 0),
                _num(s["rpo_achieved_s"]),
                _met(s["rpo_achieved_s"], s["rpo_target_s"]),
                _num(s["approval_wait_s"]),
                "yes" if s["verified"] else "no",
                _checks(s["data_checks"]),
                "yes" if s["cleaned_up"] else "no",
            ]
        )
    return rows


def _checks(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return "—"
    return "yes" if all(c["ok"] for c in checks) else "no"


HEADERS = [
    "service", "wave", "RTO target s", "RTO achieved s", "RTO", "RPO target s",
    "RPO achieved s", "RPO", "approval wait s", "verified", "data checks", "cleaned up",
]  # fmt: skip


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# {title(doc)} of `{doc['plan']}`: **{doc['verdict']}**",
        "",
        f"Run `{doc['run_id']}` started {doc['started_at']} by {doc['started_by']}, "
        f"{doc['duration_s']} s; plan version `{doc['plan_hash'][:12]}`.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(doc)]
    lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


ROW_H, LEFT, WIDTH, TOP = 34, 120, 760, 30
COLOURS = {"recover": "#4c78a8", "verify": "#54a24b", "failed": "#e45756"}


def timeline_svg(doc: dict[str, Any]) -> str:
    """Services on rows (in wave order), bars from start to recovered to verified, the RTO
    target as a dashed line on each row, wave boundaries as bands."""
    services = doc["services"]
    span = max(
        [doc["duration_s"] or 1.0]
        + [s["rto_target_s"] for s in services]
        + [s["verified_s"] or 0 for s in services]
    )
    scale = WIDTH / span
    height = TOP + ROW_H * len(services) + 30
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="timeline" width="{LEFT + WIDTH + 20}" '
        f'height="{height}" role="img" aria-label="drill timeline" font-family="sans-serif" font-size="12">'
    ]
    for i, s in enumerate(services):
        y = TOP + i * ROW_H
        band = "#f3f3f3" if s["wave"] % 2 == 0 else "#ffffff"
        out.append(f'<rect x="0" y="{y}" width="{LEFT + WIDTH}" height="{ROW_H}" fill="{band}"/>')
        out.append(f'<text x="4" y="{y + 21}">{escape(s["name"])} (wave {s["wave"]})</text>')
        start = s["started_s"]
        if start is not None:
            end_rec = s["recovered_s"] or s["verified_s"] or doc["duration_s"]
            colour = COLOURS["recover"] if s["recovered_s"] is not None else COLOURS["failed"]
            out.append(
                _bar(
                    "recover",
                    s["name"],
                    LEFT + start * scale,
                    y + 8,
                    (end_rec - start) * scale,
                    colour,
                )
            )
            if s["recovered_s"] is not None:
                end_ver = s["verified_s"] or doc["duration_s"]
                colour = COLOURS["verify"] if s["verified"] else COLOURS["failed"]
                out.append(
                    _bar(
                        "verify",
                        s["name"],
                        LEFT + s["recovered_s"] * scale,
                        y + 8,
                        (end_ver - s["recovered_s"]) * scale,
                        colour,
                    )
                )
        x = LEFT + s["rto_target_s"] * scale
        out.append(
            f'<line class="rto-target" data-service="{escape(s["name"])}" x1="{x:.1f}" y1="{y + 2}" '
            f'x2="{x:.1f}" y2="{y + ROW_H - 2}" stroke="#d62728" stroke-dasharray="4 3" stroke-width="2"/>'
        )
    axis_y = TOP + ROW_H * len(services) + 14
    for k in range(6):
        t = span * k / 5
        out.append(
            f'<text x="{LEFT + t * scale:.1f}" y="{axis_y}" text-anchor="middle">{t:.1f} s</text>'
        )
    out.append(f'<text x="{LEFT}" y="16">0 s = drill start; dashed red = RTO target</text>')
    out.append("</svg>")
    return "\n".join(out)


def _bar(kind: str, name: str, x: float, y: float, w: float, colour: str) -> str:
    return (
        f'<rect class="bar {kind}" data-service="{escape(name)}" x="{x:.1f}" y="{y}" '
        f'width="{max(w, 1.5):.1f}" height="18" fill="{colour}"><title>{escape(name)}: {kind} '
        f"{w:.0f}px</title></rect>"
    )


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.passed{color:#2a7}.failed{color:#c33}
code{background:#f4f4f4;padding:1px 4px}
"""


def html(doc: dict[str, Any]) -> str:
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table_rows(doc)
    )
    head = "".join(f"<th>{escape(h)}</th>" for h in HEADERS)
    notes = "".join(f"<li>{escape(n)}</li>" for n in doc["notes"])
    checks = "".join(
        f"<li>{escape(s['name'])}: {escape(c['name'])} — {'ok' if c['ok'] else 'FAILED'}</li>"
        for s in doc["services"]
        for c in s["data_checks"]
    )
    link = (
        f'<a href="{escape(doc["flow_run_url"])}">flow run</a>'
        if doc.get("flow_run_url")
        else "flow run"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title(doc)} {escape(doc["plan"])}: {escape(doc["verdict"])}</title>
<style>{CSS}</style></head><body>
<h1>{title(doc)} of <code>{escape(doc["plan"])}</code>: <span id="verdict" class="{escape(doc["verdict"])}">{escape(doc["verdict"])}</span></h1>
<p>Run <code id="run-id">{escape(doc["run_id"])}</code> ({link}), started {escape(doc["started_at"] or "")}
by {escape(doc["started_by"])}, {doc["duration_s"]} s. Plan version <code>{escape(doc["plan_hash"])}</code>.
Audit rows: actions {", ".join(doc["audit"]["actions"])} with this run id (<code>ktlo audit</code>).</p>
<h2>Timeline</h2>
{timeline_svg(doc)}
<h2>Objectives</h2>
<table id="objectives"><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
<h2>Data checks</h2><ul>{checks or "<li>none</li>"}</ul>
<h2>Verdict and notes</h2><ul id="notes">{notes}</ul>
</body></html>
"""
