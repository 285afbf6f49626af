"""OpenSSH's sshd for the fleet lab: unpacked from Debian's .deb (never installed), configured
per host, started in the foreground as a child of the test process.

`apt-get download openssh-server openssh-sftp-server` + `dpkg -x` into the cache, once per
version; later sessions reuse the newest unpacked copy without asking apt (works offline).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.labs.fleet_sys import TAG, LabUnavailable, LabUser, chown, locked, run

PACKAGES = ("openssh-server", "openssh-sftp-server")


def unpacked_sshd(cache: Path, user: LabUser) -> Path:
    """The directory holding usr/sbin/sshd, downloading and unpacking it the first time."""
    ready = sorted(cache.glob("openssh-*/.done"), key=lambda p: p.stat().st_mtime)
    if ready:
        return ready[-1].parent
    with locked(cache / ".lock"):
        ready = list(cache.glob("openssh-*/.done"))
        if ready:
            return ready[0].parent
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            argv = ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", *PACKAGES]
            done = subprocess.run(argv, cwd=tmp, capture_output=True, text=True, check=False)
            debs = sorted(Path(tmp).glob("*.deb"))
            if done.returncode != 0 or len(debs) != len(PACKAGES):
                raise LabUnavailable(
                    f"apt-get download {' '.join(PACKAGES)}: {done.stderr.strip()}"
                )
            version = run(["dpkg-deb", "-f", str(debs[0]), "Version"]).stdout.strip()
            out = cache / f"openssh-{version.replace(':', '_')}"
            shutil.rmtree(out, ignore_errors=True)
            for deb in debs:
                run(["dpkg", "-x", str(deb), str(out)])
        chown(out, user, recursive=True)
        (out / ".done").touch()
        return out


def sshd_config(*, port: int, host_dir: Path, lab_dir: Path, sshd_dir: Path, tag: str) -> str:
    """One host's sshd_config: key-only logins, the lab's throwaway host key, raised MaxStartups.

    StrictModes is off because the lab lives under /tmp (world-writable, which StrictModes
    rejects on the path to authorized_keys); PAM is off because sshd is not root.
    """
    return "\n".join(
        [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_dir}/ssh_host_ed25519_key",
            "PidFile none",
            f"AuthorizedKeysFile {lab_dir}/authorized_keys",
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "MaxStartups 200:30:400",
            "MaxSessions 100",
            "AcceptEnv LANG LC_*",
            f"SetEnv {TAG}={tag}",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "LogLevel INFO",
            f"Subsystem sftp {sshd_dir}/usr/lib/openssh/sftp-server",
            "",
        ]
    )


@dataclass
class Sshd:
    """One running (or stopped) sshd of a lab host; its pid is the sshd listener's own pid."""

    binary: Path
    config: Path
    log: Path
    port: int
    tag: str
    proc: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)  # every listener pid this host ever had

    @classmethod
    def at(cls, sshd_dir: Path, home: Path, tag: str) -> Sshd:
        """A host's sshd, its config and log in `home` (its port is chosen at start)."""
        return cls(sshd_dir / "usr/sbin/sshd", home / "sshd_config", home / "sshd.log", 0, tag)

    def spawn(self, user: LabUser) -> int:
        """Start `sshd -D -e` in its own session; returns the log offset to wait from."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=user.env({TAG: self.tag}),
                cwd="/",
                start_new_session=True,
                **user.popen_kwargs(),
            )
        self.pids.append(self.proc.pid)
        return offset

    def ready(self, offset: int) -> bool | None:
        """True once this sshd logged that it listens; None if it exited (e.g. port taken)."""
        with open(self.log, "rb") as log:
            log.seek(offset)
            if f"Server listening on 127.0.0.1 port {self.port}.".encode() in log.read():
                return True
        return None if self.proc is None or self.proc.poll() is not None else False

    def failure(self, offset: int) -> str:
        with open(self.log, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace").strip()[-500:]

    def kill(self) -> None:
        """SIGKILL the listener and reap it (Popen never signals a pid it already reaped)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def wait_ready(servers: list[tuple[Sshd, int]], timeout_s: float = 30.0) -> list[Sshd]:
    """Wait until every sshd listens; return those that exited instead (to retry or report)."""
    pending = list(servers)
    failed = []
    deadline = time.monotonic() + timeout_s
    while pending:
        still = []
        for server, offset in pending:
            state = server.ready(offset)
            if state is None:
                failed.append(server)
            elif not state:
                still.append((server, offset))
        pending = still
        if pending and time.monotonic() > deadline:
            detail = "; ".join(f"port {s.port}: {s.failure(o)}" for s, o in pending)
            raise RuntimeError(f"sshd did not start within {timeout_s} s: {detail}")
        if pending:
            time.sleep(0.005)
    return failed
