"""System helpers for the SSH fleet lab: the lab user, the cache, and finding lab processes.

The lab ends exactly its own processes, never another lab's or anyone else's, found two ways:
a host's sshd processes (listener, per-connection `[priv]` and `@notty`) are those of the lab
user holding a TCP socket whose local port is the host's port (`by_port`), and every process a session
starts carries `KTLO_LAB=<lab id>/<host>` (sshd's `SetEnv`; `by_tag`), which also finds the ones that
outlived their connection (a hung postinst). sshd's own environment cannot be read back: its
setproctitle() overwrites /proc/<pid>/environ.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAB_USER = "ktlo-lab"
SYSTEM_PYTHON = "/usr/bin/python3"  # the lab user cannot run an interpreter under /root
TAG = "KTLO_LAB"
BASE_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


class LabUnavailable(RuntimeError):
    """A tool or permission the lab needs is missing (tests skip locally, fail in CI)."""


@dataclass(frozen=True)
class LabUser:
    """The unprivileged account every lab sshd runs as (and the only one it lets log in)."""

    name: str
    uid: int
    gid: int
    home: str

    @property
    def switch(self) -> bool:
        return os.geteuid() != self.uid

    def popen_kwargs(self) -> dict[str, Any]:
        """Popen arguments that run the child as this user (setuid in the child, no `su`)."""
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A clean login-like environment: nothing of the test process's leaks into the lab."""
        env = {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}
        env |= {"PATH": BASE_PATH, "LANG": "C.UTF-8"}
        return env | (extra or {})


def lab_user() -> LabUser:
    """The current user when not root; as root, the system user `ktlo-lab` (created once).

    sshd run by root needs the `sshd` privilege-separation user and /run/sshd, and its sessions
    would run as root with root's dotfiles and the power to change the real system. Run
    unprivileged, sshd needs neither and a session that forgets the host's APT_CONFIG cannot
    touch this machine's dpkg database.
    """
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
    else:
        try:
            entry = pwd.getpwnam(LAB_USER)
        except KeyError:
            _create_user()
            entry = pwd.getpwnam(LAB_USER)
    return LabUser(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def _create_user() -> None:
    if shutil.which("useradd") is None:
        raise LabUnavailable(f"useradd is missing: cannot create the lab user {LAB_USER}")
    home = f"/var/lib/{LAB_USER}"
    argv = ["useradd", "--system", "--user-group", "--shell", "/bin/bash"]
    argv += ["--home-dir", home, "--create-home", LAB_USER]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 9):  # 9: created meanwhile by another session
        raise LabUnavailable(f"useradd {LAB_USER} failed: {done.stderr.strip()}")


def cache_root(user: LabUser) -> Path:
    """Built parts reused across sessions: outside /root (0700), so the lab user can read them."""
    fixed = os.environ.get("KTLO_LAB_CACHE")
    path = Path(fixed) if fixed else Path(f"/var/tmp/ktlo-lab-cache-{os.geteuid()}")
    path.mkdir(mode=0o755, parents=True, exist_ok=True)
    chown(path, user)
    return path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise cache builds between concurrent test sessions."""
    with open(path, "a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def cached(cache: Path, name: str, build: Callable[[Path], None], user: LabUser) -> Path:
    """`cache/name`, built once by `build(dir)` in place (venvs and apt lists name their path).

    `.done` marks a complete build; a build cut short is removed and redone.
    """
    final = cache / name
    if (final / ".done").exists():
        return final
    with locked(cache / ".lock"):
        if (final / ".done").exists():
            return final
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir(mode=0o755)
        build(final)
        chown(final, user, recursive=True)
        (final / ".done").touch()
    return final


def chown(path: Path, user: LabUser, recursive: bool = False) -> None:
    if not user.switch:
        return
    if recursive:
        subprocess.run(["chown", "-R", "-h", f"{user.uid}:{user.gid}", str(path)], check=True)
    else:
        os.chown(path, user.uid, user.gid, follow_symlinks=False)


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a build command; a failure raises with the command's own error output."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def by_tag(prefix: str) -> dict[str, list[int]]:
    """`KTLO_LAB` value -> pids, for the processes whose value starts with `prefix`."""
    want = f"{TAG}={prefix}".encode()
    found: dict[str, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        for var in environ:
            if var.startswith(want) and alive(int(entry.name)):
                value = var.decode(errors="replace").split("=", 1)[1]
                found.setdefault(value, []).append(int(entry.name))
                break
    return found


def tagged(value: str, *, exact: bool = False) -> list[int]:
    """Pids whose environment has `KTLO_LAB=<value>` (or starting with it, unless `exact`)."""
    return sorted(
        pid for tag, pids in by_tag(value).items() if not exact or tag == value for pid in pids
    )


def by_port(ports: set[int], uid: int) -> dict[int, list[int]]:
    """Local port -> pids of `uid` holding a TCP socket on it (a host's sshd processes)."""
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port in ports and fields[9] != "0":
                    inodes[f"socket:[{fields[9]}]"] = port
    found: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        try:
            if not entry.name.isdigit() or entry.stat().st_uid != uid:
                continue
            links = [os.readlink(fd.path) for fd in os.scandir(f"/proc/{entry.name}/fd")]
        except OSError:  # gone meanwhile
            continue
        for held in {inodes[link] for link in links if link in inodes}:
            found.setdefault(held, []).append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_all(pids: list[int], wait_s: float = 5.0) -> list[int]:
    """SIGKILL the pids and wait until none is alive; return the ones still alive."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    left = [pid for pid in pids if alive(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [pid for pid in left if alive(pid)]
    return left
