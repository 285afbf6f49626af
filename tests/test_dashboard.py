"""The status page and dashboard from a real `ktlo serve`, in Debian's Chromium.

Check results are real: a loopback HTTP service goes down and comes back between real
`health.sweep` runs. The test counts each check's up results itself from the sweeps'
outputs and expects the page, the JSON and the badges to show the same percentages.
"""

from __future__ import annotations

import datetime as dt
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Home, service_up
from tests.health_helpers import free_port, service, sweep_runbook
from tests.helpers import cli
from tests.serve_helpers import Served, wait_until
from tests.test_health_alerting import sweep
from tests.test_ui_browser import browser

__all__ = ["browser"]  # a fixture
TOKEN = "dash-token-4f1e9c"
READ = "read-token-77d2a0"  # KTLO_DASHBOARD_TOKEN: reads the dashboard, sends no alerts
SECRET = "hunter2-pass"
NS = "{http://www.w3.org/2000/svg}"


def get(url: str, token: str | None = None) -> tuple[int, str, str]:
    """(status, content type, body)."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["content-type"], exc.read().decode()


def svg_texts(body: str) -> list[str]:
    root = ET.fromstring(body)
    assert root.tag == f"{NS}svg"
    return [t.text or "" for t in root.iter(f"{NS}text")]


def expected_uptime(outputs: list[dict[str, dict[str, Any]]], name: str) -> str:
    """Up results (ok or degraded) over all results of the check, counted from the sweeps."""
    healths = [o[name]["health"] for o in outputs]
    up = sum(h != "failing" for h in healths)
    return f"{100 * up / len(healths):.2f}%"


def checks(svc_url: str, down_port: int) -> list[dict[str, Any]]:
    now = dt.datetime.now(dt.UTC)
    window = {
        "start": (now - dt.timedelta(hours=1)).isoformat(),
        "end": (now + dt.timedelta(days=1)).isoformat(),
    }
    return [
        {
            "name": "orders-api",
            "type": "http",
            "url": svc_url.replace("http://", f"http://ops:{SECRET}@") + "/health?token=" + SECRET,
            "headers": {"X-Api-Key": SECRET},
            "conditions": ["status == 200"],
            "failure_threshold": 2,
            "success_threshold": 2,
            "timeout_s": 2,
        },
        {
            "name": "billing",
            "type": "http",
            "url": f"http://127.0.0.1:{down_port}/health",
            "failure_threshold": 1,
            "timeout_s": 2,
        },
        {
            "name": "reports",
            "type": "http",
            "url": f"http://127.0.0.1:{down_port}/reports",
            "failure_threshold": 1,
            "timeout_s": 2,
            "maintenance": [window],
        },
    ]


def test_status_page_dashboard_and_badges_from_real_sweeps(
    home: Home, run: Any, browser: Any, tmp_path: Path
) -> None:
    down_port = free_port()

    def sweeps() -> tuple[list[dict[str, dict[str, Any]]], int]:
        """Up, down, up again. In a thread: Playwright's sync API holds this one's event loop."""
        with service() as svc:
            path = sweep_runbook(home, checks(svc.url, down_port), name="shop")
            done = [sweep(run, path) for _ in range(2)]
            svc.stop()
            done += [sweep(run, path) for _ in range(3)]
            svc.start()
            return done + [sweep(run, path) for _ in range(2)], svc.port

    with ThreadPoolExecutor(1) as pool:
        outputs, svc_port = pool.submit(sweeps).result()
    assert [o["orders-api"]["health"] for o in outputs] == ["ok"] * 2 + ["failing"] * 3 + ["ok"] * 2
    error = outputs[-1]["billing"]["error"]
    assert error  # the text the public page must not show
    uptime = {name: expected_uptime(outputs, name) for name in ("orders-api", "billing")}
    assert uptime == {"orders-api": "57.14%", "billing": "0.00%"}

    port = free_port()
    env = {**home.env, "KTLO_WEBHOOK_TOKEN": TOKEN, "KTLO_DASHBOARD_TOKEN": READ}
    served = Served(env, "--port", str(port), webhook=True)
    base = f"http://127.0.0.1:{port}"
    try:
        served.wait_for("dashboard on", timeout=90)
        wait_until(lambda: service_up(port), 30, "the receiver to listen")
        status, kind, public = get(f"{base}/status")
        assert status == 200
        assert kind.startswith("text/html")
        for leak in (SECRET, "127.0.0.1", str(svc_port), str(down_port), error, "ops:"):
            assert leak not in public, f"the public page shows {leak!r}"

        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/status")
        assert page.locator("#overall").inner_text() == "FAILING"
        rows = {
            name: page.locator(f'li.check[data-check="{name}"]')
            for name in ("orders-api", "billing", "reports")
        }
        states = {name: row.locator(".state").inner_text() for name, row in rows.items()}
        assert states == {"orders-api": "OK", "billing": "FAILING", "reports": "maintenance"}
        for name, expected in uptime.items():
            for cls in ("u24", "u7", "u30"):
                assert rows[name].locator(f".{cls}").inner_text() == expected, (name, cls)
        assert rows["reports"].locator(".u24").inner_text() == "-"  # maintenance is not counted
        for name, row in rows.items():
            cells = row.locator("svg.bar rect.cell")
            assert cells.count() == 24, name  # one per hour of the last 24
            used = [
                c for c in cells.evaluate_all("cs => cs.map(c => c.classList[1])") if c != "none"
            ]
            assert used, name
            worst = {"orders-api": "failing", "billing": "failing", "reports": "maintenance"}[name]
            assert worst in used, (name, used)
        assert "failing" not in rows["reports"].inner_html()
        page.screenshot(path=str(tmp_path / "status-desktop.png"), full_page=True)
        phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
        phone.goto(f"{base}/status")
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the phone view scrolls sideways ({width}px)"
        phone.screenshot(path=str(tmp_path / "status-phone.png"), full_page=True)

        # The operator view: the token, or nothing.
        assert get(f"{base}/dashboard")[0] == 401
        assert get(f"{base}/dashboard", "wrong")[0] == 401
        assert get(f"{base}/api/dashboard")[0] == 401
        assert get(f"{base}/api/dashboard", TOKEN)[0] == 200  # the receiver's token
        assert get(f"{base}/api/dashboard", READ)[0] == 200  # or the read-only one
        hook = urllib.request.Request(f"{base}/hooks/generic", data=b'{"summary": "x"}')
        hook.add_header("Authorization", f"Bearer {READ}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(hook, timeout=30)
        assert refused.value.code == 401  # the read token sends no alerts
        context = browser.new_context(
            viewport={"width": 1400, "height": 1000},
            http_credentials={"username": "ops", "password": READ},  # HTTP Basic prompt
        )
        operator = context.new_page()
        operator.goto(f"{base}/dashboard")
        billing = operator.locator('li.check[data-check="shop/sweep/billing"]')
        assert error in billing.locator(".error").inner_text()
        assert f"127.0.0.1:{down_port}" in billing.inner_text()
        assert SECRET not in operator.content()  # redacted when stored
        operator.screenshot(path=str(tmp_path / "dashboard-desktop.png"), full_page=True)
        context.close()

        # The same data as JSON, and the badges.
        import json

        data = json.loads(get(f"{base}/api/status")[2])
        found = {c["name"]: c for g in data["groups"] for c in g["checks"]}
        assert found["orders-api"]["uptime"]["7d"] == float(uptime["orders-api"].rstrip("%"))
        assert len(found["orders-api"]["bar"]["states"]) == 24
        status, kind, badge = get(f"{base}/badges/orders-api/uptime-7d.svg")
        assert (status, kind) == (200, "image/svg+xml")
        assert svg_texts(badge) == ["uptime 7d", uptime["orders-api"]]
        assert svg_texts(get(f"{base}/badges/billing/state.svg")[2]) == ["billing", "FAILING"]
        key_badge = get(f"{base}/badges/shop/sweep/reports/state.svg")[2]
        assert svg_texts(key_badge) == ["reports", "maintenance"]
        assert get(f"{base}/badges/nope/state.svg")[0] == 404
        spec = json.loads(get(f"{base}/openapi.json")[2])
        assert {"/status", "/dashboard", "/api/status", "/api/dashboard"} <= set(spec["paths"])
    finally:
        served.stop()

    out = tmp_path / "page.html"
    result = cli("status", "--html", str(out), env=home.env)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert uptime["orders-api"] in text
    assert "http-equiv" not in text
    for external in ("<script", "<link", "<img", "@import"):
        assert external not in text  # one self-contained file
    public_file = tmp_path / "public.html"
    assert cli("status", "--html", str(public_file), "--public", env=home.env).returncode == 0
    assert error not in public_file.read_text()
    assert SECRET not in public_file.read_text()
