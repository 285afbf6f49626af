"""An SSH fleet on loopback for patch-management tests and benchmarks (SPEC §13).

`Fleet(20)` builds N hosts `lab-01`..: each a real OpenSSH sshd on a free 127.0.0.1 port with
its own host key, apt/dpkg root (`APT_CONFIG`) and python venv; `start()` runs every sshd as a
child of this process, `stop()` ends exactly the lab's processes. Use `running_fleet()` or the
fixtures in `tests/labs/conftest_fleet.py`. What does not change (unpacked sshd, apt
repositories, host root template, wheels, venv template, pip-audit) is cached across sessions
in `KTLO_LAB_CACHE` (default /var/tmp/ktlo-lab-cache-<uid>); hosts live on /dev/shm.

As root, sshd runs as the unprivileged system user `ktlo-lab` (see `fleet_sys.lab_user`), the
only user it lets in. A host's `env` (the inventory's, applied inside the command line as
`remote()` does) sets `APT_CONFIG` and a `PATH` starting with the host's `bin/`, which holds:
`reboot` (the host goes down `reboot_delay_s` later, its sessions end, and it is back
`reboot_down_s` after that with a new boot id and no reboot-required file), `lab-boot-id`
(prints the boot id: the lab's stand-in for `cat /proc/sys/kernel/random/boot_id`, so the
patch code's boot-id command must be configurable) and `lab-health` (exits 1 after
`set_health(name, False)`). Paths under a host root mirror a real host's:
`<root>/var/run/reboot-required(.pkgs)`, `<root>/proc/sys/kernel/random/boot_id`; the
inventory gives the root as `vars.root`.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from tests.labs import fleet_apt, fleet_pip
from tests.labs.fleet_host import (
    LOCK_HOLDER,
    LabHost,
    Parts,
    build_parts,
    keygen,
    kill_lab,
    lab_pids,
    restore_host,
    runtime_base,
    ssh_argv,
    with_env,
)
from tests.labs.fleet_sshd import Sshd, sshd_config, wait_ready
from tests.labs.fleet_sys import (
    SYSTEM_PYTHON,
    TAG,
    LabUnavailable,
    chown,
    free_port,
    lab_user,
)

__all__ = ["Fleet", "LabHost", "LabUnavailable", "running_fleet"]


class Fleet:
    """N lab hosts: build() writes them, start()/stop() run them, the rest injects failures."""

    def __init__(
        self,
        count: int = 20,
        *,
        base: Path | None = None,
        reboot_delay_s: float = 0.2,
        reboot_down_s: float = 1.0,
        keep: bool = False,
    ) -> None:
        self.count = count
        self.base = base
        self.reboot_delay_s = reboot_delay_s
        self.reboot_down_s = reboot_down_s
        self.keep = keep
        self.user = lab_user()
        self.hosts: dict[str, LabHost] = {}
        self.timings: dict[str, float] = {}
        self.dir = Path()
        self.osv: fleet_pip.OsvServer | None = None
        self.parts: Parts  # set by build()
        self._stopping = threading.Event()
        self._rebooting: set[str] = set()
        self._supervisor: threading.Thread | None = None

    # -- paths and views ------------------------------------------------------------------
    lab_id = property(lambda self: self.dir.name)
    client_key = property(lambda self: self.dir / "client" / "id_ed25519")
    known_hosts = property(lambda self: self.dir / "known_hosts")
    inventory = property(lambda self: self.dir / "inventory.yaml")

    @property
    def osv_url(self) -> str:
        """What pip-audit's `--osv-url` takes (with `-s osv`)."""
        assert self.osv is not None, "start() the fleet first"
        return f"{self.osv.url}/v1/query"

    def __getitem__(self, name: str) -> LabHost:
        return self.hosts[name]

    # -- build ------------------------------------------------------------------------------
    def build(self) -> Fleet:
        """Write every host (cached parts are built first if missing); nothing runs yet."""
        started = time.monotonic()
        self.parts = build_parts(self.user)
        self.timings["cache_s"] = time.monotonic() - started
        self.dir = Path(tempfile.mkdtemp(prefix="ktlo-fleet-", dir=self.base or runtime_base()))
        self.dir.chmod(0o755)
        (self.dir / "client").mkdir(mode=0o700)
        keygen(self.client_key, "ktlo-lab-client")
        shutil.copy(self.client_key.with_suffix(".pub"), self.dir / "authorized_keys")
        for i in range(self.count):
            name = f"lab-{i + 1:02d}"
            home = self.dir / "hosts" / name
            sshd = Sshd.at(self.parts.sshd_dir, home, f"{self.lab_id}/{name}")
            group = "web" if i < (self.count + 1) // 2 else "db"
            self.hosts[name] = LabHost(name, home, ["lab", group], sshd)
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(self._build_host, self.hosts.values()))
        chown(self.dir / "hosts", self.user, recursive=True)
        chown(self.dir / "authorized_keys", self.user)
        self.timings["build_s"] = time.monotonic() - started
        return self

    def _build_host(self, host: LabHost) -> None:
        (host.dir / "run").mkdir(parents=True)
        host.host_key = keygen(host.dir / "ssh_host_ed25519_key", host.name)
        restore_host(host, self.parts, boot_id=str(uuid.uuid4()))

    # -- run ----------------------------------------------------------------------------------
    def start(self) -> Fleet:
        """Start every sshd at once and wait until each listens; write known_hosts, inventory."""
        started = time.monotonic()
        self.osv = fleet_pip.OsvServer()
        self._up(list(self.hosts.values()), new_ports=True)
        self.known_hosts.write_text("".join(h.known_hosts_line + "\n" for h in self.hosts.values()))
        self.write_inventory()
        for host in self.hosts.values():  # as built: reset() has nothing to restore yet
            host.dirty, host.log_mark = False, host.sshd.log.stat().st_size
        self._stopping.clear()
        self._supervisor = threading.Thread(
            target=self._supervise, name="fleet-reboots", daemon=True
        )
        self._supervisor.start()
        self.timings["start_s"] = time.monotonic() - started
        return self

    def _up(self, hosts: list[LabHost], *, new_ports: bool = False) -> None:
        """Start the hosts' sshds together; with new_ports, one that lost its port gets another."""
        for attempt in range(3 if new_ports else 1):
            waiting = []
            for host in hosts:
                if not host.port or attempt:  # taken between free_port() and sshd's bind
                    host.sshd.port = free_port()
                config = sshd_config(
                    port=host.port,
                    host_dir=host.dir,
                    lab_dir=self.dir,
                    sshd_dir=self.parts.sshd_dir,
                    tag=host.sshd.tag,
                )
                host.sshd.config.write_text(config)
                waiting.append((host.sshd, host.sshd.spawn(self.user)))
            failed = wait_ready(waiting)
            if not failed:
                return
            hosts = [h for h in hosts if h.sshd in failed]
        raise RuntimeError(
            f"sshd would not start for {', '.join(h.name for h in hosts)}: "
            f"{hosts[0].sshd.failure(0)}"
        )

    def stop(self) -> list[int]:
        """End every process of this lab (sshds, sessions, lock holders); returns their pids."""
        started = time.monotonic()
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        deadline = time.monotonic() + self.reboot_delay_s + self.reboot_down_s + 5
        while self._rebooting and time.monotonic() < deadline:
            time.sleep(0.01)
        hosts = list(self.hosts.values())
        for host in hosts:  # first: no new session starts
            host.sshd.kill()
        pids = sorted({*self.pids(), *kill_lab(self.lab_id, hosts, self.user.uid)})
        if self.osv is not None:
            self.osv.close()
        if not self.keep and self.dir.name.startswith("ktlo-fleet-"):  # never a dir not ours
            shutil.rmtree(self.dir, ignore_errors=True)
        self.timings["stop_s"] = time.monotonic() - started
        return pids

    def pids(self) -> list[int]:
        """Every sshd listener pid this lab ever started (their sessions are found by tag)."""
        return [pid for host in self.hosts.values() for pid in host.sshd.pids]

    # -- failure injection ---------------------------------------------------------------------
    def kill(self, name: str, *, sessions: bool = True) -> None:
        """The host dies: SIGKILL its sshd (and, unless sessions=False, every session on it)."""
        host = self.hosts[name]
        with host.lock:
            host.sshd.kill()  # first, so no new session starts meanwhile
            host.dirty = True
            if sessions:
                kill_lab(self.lab_id, [host], self.user.uid)

    def restart(self, name: str) -> None:
        """Bring a killed host back on the same port (a running one is killed first)."""
        host = self.hosts[name]
        with host.lock:
            if host.sshd.running:
                self.kill(name, sessions=False)
            self._up([host])

    def reset(self, *names: str) -> None:
        """Put hosts (default: all) back as built: files, packages, venv, health, sshd up.

        A host is restored when it changed since its last reset: a Fleet call on it, a
        connection to it (its sshd.log grew), a process still running on it. A test that edits
        a host's files directly should call `fleet.touch(name)`.
        """
        hosts = [self.hosts[n] for n in names] if names else list(self.hosts.values())
        deadline = time.monotonic() + self.reboot_delay_s + self.reboot_down_s + 5
        while any(h.name in self._rebooting for h in hosts) and time.monotonic() < deadline:
            time.sleep(0.01)
        running = lab_pids(self.lab_id, hosts, self.user.uid)
        listeners = {h.sshd.proc.pid for h in hosts if h.sshd.proc is not None and h.sshd.running}
        dirty = [
            h
            for h in hosts
            if h.dirty
            or not h.sshd.running
            or running[h.name] - listeners
            or h.sshd.log.stat().st_size != h.log_mark
            or h.reboot_request.exists()
        ]
        kill_lab(self.lab_id, dirty, self.user.uid, spare=frozenset(listeners))

        def one(host: LabHost) -> None:
            with host.lock:
                host.reboot_request.unlink(missing_ok=True)
                restore_host(host, self.parts, boot_id=host.boot_id())
                chown(host.dir, self.user, recursive=True)
                if not host.sshd.running:
                    self._up([host])
                host.dirty = False
                host.log_mark = host.sshd.log.stat().st_size

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(one, dirty))

    def touch(self, name: str) -> None:
        """Mark a host changed, so the next reset() restores it."""
        self.hosts[name].dirty = True

    def set_health(self, name: str, healthy: bool) -> None:
        """Make the host's `lab-health` command fail (False) or pass (True)."""
        self.touch(name)
        marker = self.hosts[name].root / "etc" / "lab-health-fail"
        if healthy:
            marker.unlink(missing_ok=True)
        else:
            marker.parent.mkdir(exist_ok=True)
            marker.write_text("unhealthy\n")

    @contextlib.contextmanager
    def hold_lock(self, name: str) -> Iterator[int]:
        """A process holding the host's dpkg locks (like a running unattended-upgrades)."""
        host = self.hosts[name]
        host.dirty = True
        paths = [str(host.root / "var/lib/dpkg" / f) for f in ("lock-frontend", "lock")]
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", LOCK_HOLDER, *paths],
            stdout=subprocess.PIPE,
            env=self.user.env({TAG: host.sshd.tag}),
            start_new_session=True,
            **self.user.popen_kwargs(),
        )
        try:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"locked":
                raise RuntimeError(f"the lock holder for {name} did not take the dpkg lock")
            yield proc.pid
        finally:
            proc.kill()
            proc.wait(timeout=5)

    def dpkg_install(self, name: str, package: str, version: str) -> None:
        """Install one lab .deb version on a host with dpkg (an out-of-band change)."""
        deb = fleet_apt.deb_path(self.parts.repo, package, version)
        done = self.run(
            name, shlex.join([*fleet_apt.dpkg_argv(self.hosts[name].root), "-i", str(deb)])
        )
        if done.returncode != 0:
            raise RuntimeError(f"dpkg -i {deb.name} on {name}: {done.stderr.strip()}")

    def installed(self, name: str) -> dict[str, str]:
        """name -> version of the packages dpkg has installed ("ii") on the host."""
        return fleet_apt.installed(self.hosts[name].root)

    def packages(self, name: str) -> dict[str, tuple[str, str]]:
        """name -> (version, dpkg status abbrev such as "ii" or "iF") on the host."""
        return fleet_apt.packages(self.hosts[name].root)

    def pip_installed(self, name: str) -> dict[str, str]:
        return fleet_pip.venv_packages(self.hosts[name].venv)

    # -- commands --------------------------------------------------------------------------------
    def run(self, name: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a shell command as the host would (lab user, host env) without SSH."""
        host = self.hosts[name]
        host.dirty = True
        return subprocess.run(
            ["/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            env=self.user.env(host.env | {TAG: host.sshd.tag}),
            cwd=self.user.home,
            timeout=timeout,
            check=False,
            **self.user.popen_kwargs(),
        )

    def remote(self, name: str, command: str) -> str:
        """`command` with the host's env applied inside the command line (sshd drops client env)."""
        return with_env(self.hosts[name].env, command)

    def ssh_argv(self, name: str, known_hosts: Path | None = None) -> list[str]:
        """OpenSSH client argv for a host: key only, strict host-key checking, no user config."""
        known = known_hosts or self.known_hosts
        return ssh_argv(self.hosts[name].port, self.client_key, known, self.user.name)

    def ssh(
        self,
        name: str,
        command: str,
        *,
        env: bool = True,
        timeout: float = 60,
        known_hosts: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        line = self.remote(name, command) if env else command
        return subprocess.run(
            [*self.ssh_argv(name, known_hosts), line],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )

    def write_inventory(self, path: Path | None = None) -> Path:
        """The SPEC §10 inventory of this lab (default: `<lab>/inventory.yaml`)."""
        defaults = {
            "user": self.user.name,
            "port": 22,
            "known_hosts": str(self.known_hosts),
            "key_file": str(self.client_key),
        }
        hosts = {h.name: h.inventory_entry() for h in self.hosts.values()}
        target = path or self.inventory
        target.write_text(yaml.safe_dump({"defaults": defaults, "hosts": hosts}, sort_keys=False))
        return target

    # -- reboots -------------------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stopping.wait(0.05):
            for host in self.hosts.values():
                if host.name not in self._rebooting and host.reboot_request.exists():
                    self._rebooting.add(host.name)
                    threading.Thread(target=self._reboot, args=(host,), daemon=True).start()

    def _reboot(self, host: LabHost) -> None:
        try:
            time.sleep(self.reboot_delay_s)
            with host.lock:
                host.reboot_request.unlink(missing_ok=True)
                self.kill(host.name)
                host.boot_id_file.write_text(f"{uuid.uuid4()}\n")
                for path in (host.reboot_required, host.reboot_required.with_suffix(".pkgs")):
                    path.unlink(missing_ok=True)
            if self._stopping.wait(self.reboot_down_s):
                return
            with host.lock:
                host.reboots += 1
                self._up([host])
        finally:
            self._rebooting.discard(host.name)


@contextlib.contextmanager
def running_fleet(count: int = 20, **kwargs: Any) -> Iterator[Fleet]:
    """A built and started fleet, stopped (every lab process ended) on exit."""
    fleet = Fleet(count, **kwargs).build()
    try:
        yield fleet.start()
    finally:
        fleet.stop()
