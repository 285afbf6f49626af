"""The embedded Prefect server: started once in the background, reused by every command.

Prefect's ephemeral mode starts a server inside each process (9-20 s on a small machine);
a long-running local server makes `ktlo run` take about a second instead. Unless
`PREFECT_API_URL` points elsewhere, ktlo starts `prefect server start` on 127.0.0.1 with its
database under `KTLO_HOME/prefect` (through `orchestration.prefect_server`, which makes its
SQLite write transactions wait for the lock instead of failing), records where it listens,
and leaves it running; `ktlo server stop` stops it. Nothing here imports Prefect, so it stays
cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from ktlo.errors import KtloError
from ktlo.processes import pid_alive
from ktlo.settings import get_settings

DEFAULT_PORT = 4200
START_TIMEOUT_S = 120
HEARTBEAT_S = 30  # Prefect's minimum; the zombie automation waits three of them


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    port: int
    home: str

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def prefect_home() -> Path:
    return get_settings().home_dir / "prefect"


def _state_file() -> Path:
    return prefect_home() / "server.json"


def healthy(api_url: str, timeout: float = 1.0) -> bool:
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def read_info() -> ServerInfo | None:
    try:
        data = json.loads(_state_file().read_text())
        return ServerInfo(pid=int(data["pid"]), port=int(data["port"]), home=str(data["home"]))
    except (OSError, ValueError, KeyError):
        return None


def _serves(info: ServerInfo, timeout: float = 1.0) -> bool:
    """The server answering on the port is ours (several ktlo homes may run servers)."""
    try:
        # Plain HTTP needs no certificates; loading them costs a tenth of a second of CPU.
        url = f"{info.api_url}/admin/settings"
        response = httpx.get(url, timeout=timeout, verify=url.startswith("https:"))
        return response.status_code == 200 and response.json().get("home") == info.home
    except (httpx.HTTPError, ValueError):
        return False


def running() -> ServerInfo | None:
    info = read_info()
    if info is not None and pid_alive(info.pid) and _serves(info):
        return info
    return None

    return True


def _free_port(preferred: int | None) -> int:
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as sock:
            # As the server binds: connections of a killed server in TIME_WAIT do not count.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise KtloError("no free TCP port for the local Prefect server")


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    """Serialise concurrent starts on this machine (the embedded server is per machine)."""
    prefect_home().mkdir(parents=True, exist_ok=True)
    with open(prefect_home() / "server.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def server_command(port: int) -> list[str]:
    """The command line of a Prefect server on 127.0.0.1:`port` (also for benches and tests)."""
    return [
        sys.executable,
        "-m",
        "ktlo.orchestration.prefect_server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def server_env(home: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            # The UI calls the API at this address (it defaults to port 4200 otherwise).
            "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
            # Runs held back by a deployment concurrency limit retry every few seconds.
            "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_CONNECT_ARGS_TIMEOUT": "60",
            # The SQLite-backed server locks under bursts; give writers time instead of errors.
            "PREFECT_API_DATABASE_TIMEOUT": "60",
        }
    )
    return env


def start(
    port: int | None = DEFAULT_PORT, *, quiet: bool = False, keep_port: bool = True
) -> ServerInfo:
    """Start the local server unless it is already up; returns where it listens.

    A server that died (or was stopped) comes back on the port it had (runs, bookmarks and
    workers know that address) unless `keep_port` is false; otherwise `port` is tried
    first (the UI's usual 4200), else any free port; `None` for any free port. A new server is prepared like any other
    (`ktlo.orchestration.prepare`): work pool and zombie-run automation.
    """
    with _start_lock():
        info = running()
        if info is not None:
            return info
        home = prefect_home()
        home.mkdir(parents=True, exist_ok=True)
        previous = read_info()
        chosen = _free_port(previous.port if previous is not None and keep_port else port)
        log_path = home / "server.log"
        if not quiet:
            print(
                f"Starting a local Prefect server on http://127.0.0.1:{chosen} "
                f"(first time only; it keeps running — stop it with `ktlo server stop`)…",
                file=sys.stderr,
            )
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                server_command(chosen),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_env(home, chosen),
                start_new_session=True,
            )
        info = ServerInfo(pid=proc.pid, port=chosen, home=str(home))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-5:]
                raise KtloError(
                    f"the local Prefect server exited (code {proc.returncode}); see {log_path}: "
                    + " | ".join(tail)
                )
            if _serves(info, timeout=0.5):
                _prepare(info)
                _state_file().write_text(
                    json.dumps({"pid": info.pid, "port": info.port, "home": info.home})
                )
                return info
            time.sleep(0.25)
        proc.terminate()
        raise KtloError(
            f"the local Prefect server did not become healthy in {START_TIMEOUT_S}s; see {log_path}"
        )


def _prepare(info: ServerInfo) -> None:
    """Work pool and zombie automation, in a child process: this one may not import Prefect."""
    env = {**os.environ, "PREFECT_API_URL": info.api_url}
    done = subprocess.run(
        [sys.executable, "-m", "ktlo.orchestration.prepare"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise KtloError(f"could not prepare the local Prefect server: {tail}")


def stop() -> ServerInfo | None:
    """Stop the local server; its port is kept for the next start."""
    info = read_info()
    if info is None or not pid_alive(info.pid):
        return None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and pid_alive(info.pid):
        time.sleep(0.1)
    if pid_alive(info.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(info.pid, signal.SIGKILL)
    return info


# The API URL `preset_api` gave Prefect before its import, if it did.
_preset: str | None = None


def preset_api() -> None:
    """Before Prefect is imported: give it the settings `ensure_api` will most likely set.

    The local server named by the state file, if its process lives (not asked yet: that is
    `ensure_api`'s job), and the heartbeat. Prefect then reads them once at its import,
    instead of re-reading all of its settings when `ensure_api` finds the server (50-70 ms
    of CPU). A command that ends up starting nothing has changed only its own environment.
    """
    global _preset
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return
    info = read_info()
    if info is not None and pid_alive(info.pid):
        _preset = os.environ["PREFECT_API_URL"] = info.api_url
        plain_http_tls(info.api_url)


def ensure_api(*, quiet: bool = False) -> str:
    """Point this process at a Prefect API: `PREFECT_API_URL` if set, else the local server.

    Sets the environment (for child processes and a later `import prefect`) and, when Prefect
    is already imported, its process-wide settings too.
    Flow runs started here send heartbeats, so a run whose process is killed is marked
    Crashed by the server's zombie automation (`ktlo.orchestration.crashes`).
    """
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(HEARTBEAT_S))
    configured = os.environ.get("PREFECT_API_URL")
    if configured and configured != _preset:
        api_url = configured
    else:
        api_url = start(quiet=quiet).api_url
        os.environ["PREFECT_API_URL"] = api_url
    plain_http_tls(api_url)
    if "prefect.context" in sys.modules and api_url != _preset:
        _apply_to_loaded_prefect(api_url)
    return api_url


def plain_http_tls(api_url: str) -> None:
    """Spare Prefect's clients a CA bundle they never use on a plain-HTTP API.

    Prefect builds an SSL context from `PREFECT_API_SSL_CERT_FILE` (by default certifi's
    ~150 certificates: 40 ms of CPU) for every client it makes, two per flow run, http://
    or not. For a plain-HTTP API such as the local server, ktlo names a file holding ONE of
    those certificates instead; no connection ever uses it. An https:// API, or a setting the
    operator made, is left alone. Set before Prefect reads its settings (at its import).
    """
    if not api_url.startswith("http://") or os.environ.get("PREFECT_API_SSL_CERT_FILE"):
        return
    path = prefect_home() / "plain-http-ca.pem"
    if not path.exists():
        import certifi

        bundle = Path(certifi.where()).read_text()
        end = "-----END CERTIFICATE-----"
        first = bundle[bundle.index("-----BEGIN CERTIFICATE-----") : bundle.index(end) + len(end)]
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(first + "\n")
        partial.replace(path)
    os.environ["PREFECT_API_SSL_CERT_FILE"] = str(path)


def _apply_to_loaded_prefect(api_url: str) -> None:
    """Prefect reads settings once at import; make it re-read the environment."""
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()
