"""The fleet lab's Python side: tiny wheels, per-host virtualenvs, pip-audit, an OSV endpoint.

Each host's venv (pip shared through a `.pth`, see `build_venv`) has a `pip.conf` (`no-index`,
`find-links` = the lab wheelhouse), so
`<venv>/bin/pip list --outdated --format=json` and `pip install name==ver` work offline, and a
`<venv>/bin/pip-audit` that audits that venv (one shared pip-audit install, pointed at the
venv's python with PIPAPI_PYTHON_LOCATION). pip-audit needs `-s osv --osv-url <fleet.osv_url>`
(or PIP_AUDIT_VULNERABILITY_SERVICE / PIP_AUDIT_OSV_URL) to ask the lab's endpoint, which
serves OSV's `POST /v1/query` (what pip-audit calls), `POST /v1/querybatch` and
`GET /v1/vulns/{id}`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.labs.fleet_sys import BASE_PATH, SYSTEM_PYTHON, run

PIP_AUDIT = "pip-audit==2.10.1"
WHEELS = {"lab-httpkit": ["1.0", "1.1"], "lab-yamlish": ["1.0", "2.0"], "lab-utils": ["1.0"]}
PIP_INSTALLED = {"lab-httpkit": "1.0", "lab-yamlish": "1.0", "lab-utils": "1.0"}
PIP_OUTDATED = {"lab-httpkit": "1.1", "lab-yamlish": "2.0"}
VULN_ID = "LAB-2026-0001"
VULNS: dict[str, dict[str, Any]] = {
    VULN_ID: {
        "schema_version": "1.6.0",
        "id": VULN_ID,
        "aliases": ["CVE-2026-0001"],
        "summary": "lab-httpkit before 1.1 trusts any certificate (lab fixture)",
        "published": "2026-01-01T00:00:00Z",
        "modified": "2026-01-02T00:00:00Z",
        "affected": [
            {
                "package": {"name": "lab-httpkit", "ecosystem": "PyPI"},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.1"}]}
                ],
                "versions": ["1.0"],
            }
        ],
    }
}


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def build_wheelhouse(out: Path) -> None:
    """Pure-Python wheels written directly (a wheel is a zip with METADATA, WHEEL and RECORD)."""
    for name, versions in WHEELS.items():
        for version in versions:
            _write_wheel(out, name, version)


def _write_wheel(out: Path, name: str, version: str) -> None:
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f'"""ktlo fleet lab package."""\n__version__ = "{version}"\n',
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        "Summary: ktlo fleet lab package\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: ktlo-lab\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(out / f"{module}-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def build_tools(out: Path) -> None:
    """One pip-audit install for every host (from the package index, once per cache)."""
    run([SYSTEM_PYTHON, "-m", "venv", str(out)])
    run([str(out / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", PIP_AUDIT])


def build_pip(out: Path) -> None:
    """pip (and setuptools) as ensurepip puts them in a venv, shared by every host venv."""
    run([SYSTEM_PYTHON, "-m", "venv", str(out)])


def shared_site(pip_venv: Path) -> Path:
    return next(pip_venv.glob("lib/python3*/site-packages"))


def build_venv(out: Path, wheelhouse: Path, tools: Path, pip_venv: Path) -> None:
    """A venv template with the PIP_INSTALLED wheels, copied for each host.

    The venv is made `--without-pip` and a `.pth` puts the shared pip on its path: it behaves
    as a normal venv (`bin/pip`, `pip list` shows pip) at a few dozen files instead of 1,500,
    which keeps a 20-host lab quick to copy and to delete.
    """
    run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(out)])
    site = next(out.glob("lib/python3*/site-packages"))
    (site / "_lab_shared_pip.pth").write_text(f"{shared_site(pip_venv)}\n")
    for name in ("pip", "pip3"):
        script = out / "bin" / name
        script.write_text(
            f"#!{out}/bin/python\nimport sys\n\nfrom pip._internal.cli.main import main\n\n"
            "sys.exit(main())\n"
        )
        script.chmod(0o755)
    conf = (
        f"[global]\nno-index = true\nfind-links = {wheelhouse}\ndisable-pip-version-check = true\n"
    )
    (out / "pip.conf").write_text(conf)
    wanted = [f"{name}=={version}" for name, version in PIP_INSTALLED.items()]
    # Only the venv's pip.conf: the caller's PIP_* variables (a mirror, find-links) stay out.
    env = {"PATH": BASE_PATH, "LANG": "C.UTF-8", "HOME": str(out)}
    run([str(out / "bin" / "python"), "-m", "pip", "install", "--quiet", *wanted], env=env)
    audit = out / "bin" / "pip-audit"
    audit.write_text(
        "#!/bin/sh\n# pip-audit for this virtualenv: one shared install, pointed at this venv.\n"
        f'PIPAPI_PYTHON_LOCATION="{out}/bin/python" exec "{tools}/bin/pip-audit" "$@"\n'
    )
    audit.chmod(0o755)


def copy_venv(template: Path, dest: Path) -> None:
    """A host's venv: a copy of the template with the files that name its path rewritten."""
    run(["cp", "-a", str(template), str(dest)])
    old, new = str(template).encode(), str(dest).encode()
    for path in [*(dest / "bin").iterdir(), dest / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old in data:
            path.write_bytes(data.replace(old, new))


def venv_packages(venv: Path) -> dict[str, str]:
    """name -> version of what is installed in a venv, read from its dist-info directories."""
    found = {}
    for site in venv.glob("lib/python3*/site-packages"):
        for info in site.glob("*.dist-info"):
            name, _, version = info.name[: -len(".dist-info")].rpartition("-")
            found[_canon(name)] = version
    return found


class OsvServer:
    """An OSV-compatible API on 127.0.0.1 (a thread in the test process), knowing VULNS only."""

    def __init__(self) -> None:
        self.queries: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def matches(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        self.queries.append(query)
        package = query.get("package") or {}
        name, version = _canon(str(package.get("name", ""))), str(query.get("version", ""))
        return [
            vuln
            for vuln in VULNS.values()
            for affected in vuln["affected"]
            if _canon(affected["package"]["name"]) == name and version in affected["versions"]
        ]


def _handler(osv: OsvServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._send(400, {"message": "request body is not JSON"})
                return
            if self.path == "/v1/query":
                found = osv.matches(body)
                self._send(200, {"vulns": found} if found else {})
            elif self.path == "/v1/querybatch":
                results = [
                    {"vulns": [{"id": v["id"], "modified": v["modified"]} for v in osv.matches(q)]}
                    for q in body.get("queries", [])
                ]
                self._send(200, {"results": results})
            else:
                self._send(404, {"message": f"no such endpoint: POST {self.path}"})

        def do_GET(self) -> None:
            vuln = VULNS.get(self.path.removeprefix("/v1/vulns/"))
            if self.path.startswith("/v1/vulns/") and vuln:
                self._send(200, vuln)
            else:
                self._send(404, {"message": f"not found: {self.path}"})

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the queries are kept in OsvServer.queries

    return Handler
