"""One fleet lab host (its files and fake commands) and the cached parts every host copies."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.labs import fleet_apt, fleet_pip
from tests.labs.fleet_sshd import Sshd, unpacked_sshd
from tests.labs.fleet_sys import (
    BASE_PATH,
    SYSTEM_PYTHON,
    LabUnavailable,
    LabUser,
    by_port,
    by_tag,
    cache_root,
    cached,
    kill_all,
    run,
)

FORMAT = 2  # bump when a cached part's layout changes
TOOLS = ("ssh", "ssh-keygen", "dpkg-deb", "dpkg-scanpackages", "apt-get", SYSTEM_PYTHON)


@dataclass
class LabHost:
    name: str
    dir: Path
    groups: list[str]
    sshd: Sshd
    host_key: str = ""  # "ssh-ed25519 AAAA..." (public)
    reboots: int = 0
    dirty: bool = True  # changed since the last reset (a Fleet call, or see Fleet.reset)
    log_mark: int = -1  # sshd.log size at the last reset: it grows with every connection
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    port = property(lambda self: self.sshd.port)
    root = property(lambda self: self.dir / "root")
    venv = property(lambda self: self.dir / "venv")
    bin = property(lambda self: self.dir / "bin")
    apt_config = property(lambda self: self.dir / "apt.conf")
    dpkg_status = property(lambda self: self.root / "var/lib/dpkg/status")
    reboot_required = property(lambda self: self.root / "var/run/reboot-required")
    boot_id_file = property(lambda self: self.root / "proc/sys/kernel/random/boot_id")
    reboot_request = property(lambda self: self.dir / "run" / "reboot-request")

    @property
    def env(self) -> dict[str, str]:
        """What a command on this host needs set (applied inside the remote command line)."""
        return {"APT_CONFIG": str(self.apt_config), "PATH": f"{self.bin}:{BASE_PATH}"}

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key}"

    def boot_id(self) -> str:
        return self.boot_id_file.read_text().strip()

    def inventory_entry(self) -> dict[str, Any]:
        return {
            "address": "127.0.0.1",
            "port": self.port,
            "groups": self.groups,
            "env": self.env,
            "vars": {"root": str(self.root), "venv": str(self.venv)},
        }


@dataclass(frozen=True)
class Parts:
    """What every host is made from, built once and cached across sessions."""

    sshd_dir: Path
    repo: Path
    root_template: Path
    wheelhouse: Path
    venv_template: Path


def build_parts(user: LabUser) -> Parts:
    for tool in TOOLS:
        if shutil.which(tool) is None:
            raise LabUnavailable(f"the fleet lab needs {tool} (.ci/debian-packages.txt)")
    cache = cache_root(user)
    spec = [FORMAT, fleet_apt.spec_hash(), fleet_pip.WHEELS, fleet_pip.PIP_INSTALLED]
    key = hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:12]
    sshd_dir = unpacked_sshd(cache, user)
    repo = cached(cache, f"repo-{key}", fleet_apt.build_repo, user)
    root = cached(cache, f"root-{key}", lambda out: fleet_apt.build_root(out, repo), user)
    wheels = cached(cache, f"wheels-{key}", fleet_pip.build_wheelhouse, user)
    try:
        tools_name = "tools-" + fleet_pip.PIP_AUDIT.replace("==", "-")
        tools = cached(cache, tools_name, fleet_pip.build_tools, user)
    except RuntimeError as exc:
        raise LabUnavailable(f"cannot install {fleet_pip.PIP_AUDIT} for the lab: {exc}") from exc
    pip = cached(cache, f"pip-{key}", fleet_pip.build_pip, user)
    venv = cached(
        cache, f"venv-{key}", lambda out: fleet_pip.build_venv(out, wheels, tools, pip), user
    )
    return Parts(sshd_dir, repo, root, wheels, venv)


def keygen(path: Path, comment: str) -> str:
    """A throwaway ed25519 key pair; returns the public key as "ssh-ed25519 AAAA..."."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


def restore_host(host: LabHost, parts: Parts, boot_id: str) -> None:
    """(Re)create a host's root, venv and fake commands from the templates."""
    for part in (host.root, host.venv, host.bin):
        shutil.rmtree(part, ignore_errors=True)
    run(["cp", "-a", str(parts.root_template), str(host.root)])
    (host.root / ".done").unlink()
    fleet_pip.copy_venv(parts.venv_template, host.venv)
    (host.venv / ".done").unlink()
    host.apt_config.write_text(fleet_apt.apt_config(host.root))
    host.boot_id_file.write_text(boot_id + "\n")
    host.bin.mkdir()
    scripts = {
        "reboot": f': > {host.reboot_request}\necho "{host.name}: rebooting"\n',
        "lab-boot-id": f"exec cat {host.boot_id_file}\n",
        "lab-health": f"if [ -e {host.root}/etc/lab-health-fail ]; then\n"
        f"    echo '{host.name}: unhealthy (lab)' >&2\n    exit 1\nfi\necho ok\n",
    }
    for name, body in scripts.items():
        script = host.bin / name
        script.write_text(f"#!/bin/sh\n# ktlo fleet lab: {name} for {host.name}\n{body}")
        script.chmod(0o755)


def lab_pids(lab_id: str, hosts: list[LabHost], uid: int) -> dict[str, set[int]]:
    """Host name -> pids of its sshd processes (listener included) and sessions, one scan."""
    tags = by_tag(f"{lab_id}/")
    ports = by_port({h.port for h in hosts}, uid)
    return {h.name: {*tags.get(h.sshd.tag, []), *ports.get(h.port, [])} for h in hosts}


def kill_lab(
    lab_id: str, hosts: list[LabHost], uid: int, spare: frozenset[int] = frozenset()
) -> set[int]:
    """Kill the hosts' sshd processes and sessions (but `spare`) until none is left.

    Kill the listeners first so no new connection starts; a dying session may still have
    forked, hence the loop.
    """
    killed: set[int] = set()
    for _ in range(50):
        pids = {p for found in lab_pids(lab_id, hosts, uid).values() for p in found} - spare
        if not pids:
            return killed
        killed |= pids
        kill_all(sorted(pids))
    raise RuntimeError(f"processes of lab {lab_id} keep appearing: {sorted(pids)}")


def with_env(env: dict[str, str], command: str) -> str:
    """The command line that sets `env` first, as the patch code must (sshd drops client env)."""
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + "; " + command


def ssh_argv(port: int, key: Path, known_hosts: Path, user: str) -> list[str]:
    """OpenSSH client argv: key only, strict host-key checking, no user or system config."""
    opts = [f"UserKnownHostsFile={known_hosts}", "StrictHostKeyChecking=yes",
            "GlobalKnownHostsFile=/dev/null", "BatchMode=yes", "IdentitiesOnly=yes",
            "ConnectTimeout=10", "LogLevel=ERROR"]  # fmt: skip
    argv = ["ssh", "-F", "/dev/null", "-i", str(key), "-p", str(port)]
    return [*argv, *(x for o in opts for x in ("-o", o)), f"{user}@127.0.0.1"]


def runtime_base() -> Path | None:
    """tmpfs when there is one: on this machine's ext4 a rmdir costs ~3 ms, on /dev/shm 50 µs."""
    fixed = os.environ.get("KTLO_LAB_DIR")
    if fixed:
        return Path(fixed)
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


LOCK_HOLDER = """import fcntl, os, sys, time
fds = [os.open(path, os.O_RDWR | os.O_CREAT, 0o640) for path in sys.argv[1:]]
for fd in fds:
    fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(86400)
"""
