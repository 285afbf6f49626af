"""The fleet lab's Debian side: tiny packages, local `file:` repositories, a host's apt/dpkg root.

Two suites, like Debian's: `bookworm` (Label `Debian`: every 1.0 and the 1.1 updates) and
`bookworm-security` (Label `Debian-Security`: the 1.0.1 fixes), so a lab host's
`apt-get -s dist-upgrade` prints `Inst lab-ssl [1.0] (1.0.1 Debian-Security:12/stable-security
[all])` for a security update and `... Debian:12/stable ...` for the others. Old versions stay
in the main suite so `apt-get install --allow-downgrades name=1.0` can roll a host back.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.labs.fleet_sys import run

CODENAME = {"main": "bookworm", "security": "bookworm-security"}
LABEL = {"main": ("Debian", "stable"), "security": ("Debian-Security", "stable-security")}

REBOOT_POSTINST = """#!/bin/sh
set -e
# Like a kernel package: ask for a reboot ($DPKG_ROOT is the host root dpkg was given).
if [ "$1" = configure ]; then
    mkdir -p "$DPKG_ROOT/var/run"
    echo '*** System restart required ***' > "$DPKG_ROOT/var/run/reboot-required"
    echo lab-kernel >> "$DPKG_ROOT/var/run/reboot-required.pkgs"
fi
"""
FAILING_POSTINST = """#!/bin/sh
echo "lab-broken: post-installation failed (injected failure)" >&2
exit 1
"""
PROMPT_POSTINST = """#!/bin/sh
# Asks like an interactive tool and waits for an answer that never comes: a closed stdin does
# not end the wait either, only a timeout (or an answer) does.
printf 'lab-prompt: restart services now? [Y/n] ' >&2
while ! read -r answer; do sleep 1; done
echo "lab-prompt: answered $answer" >&2
"""


@dataclass(frozen=True)
class Deb:
    name: str
    version: str
    suite: str = "main"
    postinst: str = ""
    depends: str = ""

    @property
    def filename(self) -> str:
        return f"{self.name}_{self.version}_all.deb"


DEBS = [
    Deb("lab-base", "1.0"),
    *(Deb(name, "1.0") for name in ("lab-app", "lab-agent", "lab-tools", "lab-ssl", "lab-zlib")),
    Deb("lab-app", "1.1", depends="lab-base (>= 1.0)"),
    Deb("lab-agent", "1.1"),
    Deb("lab-tools", "1.1"),
    Deb("lab-ssl", "1.0.1", suite="security"),
    Deb("lab-zlib", "1.0.1", suite="security"),
    # Failure injection and reboots: installed on a host only when a test asks for it.
    Deb("lab-kernel", "1.0"),
    Deb("lab-kernel", "1.1", postinst=REBOOT_POSTINST),
    Deb("lab-broken", "1.0"),
    Deb("lab-broken", "1.1", postinst=FAILING_POSTINST),
    Deb("lab-prompt", "1.0"),
    Deb("lab-prompt", "1.1", postinst=PROMPT_POSTINST),
]
# What every lab host has installed at the start, and what it is offered.
INSTALLED = {
    n: "1.0" for n in ("lab-base", "lab-app", "lab-agent", "lab-tools", "lab-ssl", "lab-zlib")
}
UPGRADES = {
    "lab-agent": "1.1",
    "lab-app": "1.1",
    "lab-ssl": "1.0.1",
    "lab-tools": "1.1",
    "lab-zlib": "1.0.1",
}
SECURITY = frozenset({"lab-ssl", "lab-zlib"})


def spec_hash() -> str:
    spec = [(d.name, d.version, d.suite, d.postinst, d.depends) for d in DEBS]
    return hashlib.sha256(json.dumps([spec, INSTALLED, CODENAME]).encode()).hexdigest()[:12]


def arch() -> str:
    return run(["dpkg", "--print-architecture"]).stdout.strip()


def build_repo(out: Path) -> None:
    """Build every .deb with `dpkg-deb`, index each suite with `dpkg-scanpackages`."""
    native = arch()
    for suite, codename in CODENAME.items():
        pool = out / "pool" / codename
        pool.mkdir(parents=True)
        for deb in (d for d in DEBS if d.suite == suite):
            _build_deb(deb, out / "src", pool)
        index = run(["dpkg-scanpackages", "-m", f"pool/{codename}", "/dev/null"], cwd=out)
        dist = out / "dists" / codename
        binary = dist / "main" / f"binary-{native}"
        binary.mkdir(parents=True)
        (binary / "Packages").write_text(index.stdout)
        data = index.stdout.encode()
        label, suite_name = LABEL[suite]
        release = [
            "Origin: Debian",
            f"Label: {label}",
            f"Suite: {suite_name}",
            "Version: 12",
            f"Codename: {codename}",
            "Date: Thu, 01 Jan 2026 00:00:00 UTC",
            f"Architectures: {native}",
            "Components: main",
            "SHA256:",
            f" {hashlib.sha256(data).hexdigest()} {len(data)} main/binary-{native}/Packages",
        ]
        (dist / "Release").write_text("\n".join(release) + "\n")


def _build_deb(deb: Deb, src: Path, pool: Path) -> None:
    tree = src / f"{deb.name}-{deb.version}"
    (tree / "DEBIAN").mkdir(parents=True)
    share = tree / "usr" / "share" / deb.name
    share.mkdir(parents=True)
    (share / "version").write_text(deb.version + "\n")
    control = [
        f"Package: {deb.name}",
        f"Version: {deb.version}",
        "Architecture: all",
        "Maintainer: ktlo lab <lab@localhost>",
        *([f"Depends: {deb.depends}"] if deb.depends else []),
        f"Description: ktlo fleet lab package {deb.name}",
    ]
    (tree / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    if deb.postinst:
        script = tree / "DEBIAN" / "postinst"
        script.write_text(deb.postinst)
        script.chmod(0o755)
    argv = ["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(tree)]
    run([*argv, str(pool / deb.filename)])


def deb_path(repo: Path, name: str, version: str) -> Path:
    for deb in DEBS:
        if deb.name == name and deb.version == version:
            return repo / "pool" / CODENAME[deb.suite] / deb.filename
    raise KeyError(f"the lab has no package {name}={version}")


def apt_config(host_root: Path) -> str:
    """An APT_CONFIG that confines apt and dpkg to one host root (nothing of /etc/apt is read).

    apt locks `<root>/var/lib/dpkg/lock-frontend` and `lock` (next to Dir::State::status), so a
    process holding those blocks the host's apt until `DPkg::Lock::Timeout`: no
    `Debug::NoLocking` needed, locking works unprivileged in a directory the user owns.
    """
    r = str(host_root)
    dpkg = [
        f"--root={r}",
        f"--admindir={r}/var/lib/dpkg",
        f"--log={r}/var/log/dpkg.log",
        "--force-not-root",
        "--force-bad-path",
        "--force-script-chrootless",  # maintainer scripts run with DPKG_ROOT, no chroot(2)
    ]
    lines = [
        f'Dir::State "{r}/var/lib/apt";',
        f'Dir::State::status "{r}/var/lib/dpkg/status";',
        f'Dir::Cache "{r}/var/cache/apt";',
        f'Dir::Log "{r}/var/log/apt";',
        f'Dir::Etc::main "{r}/etc/apt/apt.conf";',
        f'Dir::Etc::SourceList "{r}/etc/apt/sources.list";',
        f'Dir::Etc::SourceParts "{r}/etc/apt/sources.list.d";',
        f'Dir::Etc::Parts "{r}/etc/apt/apt.conf.d";',
        f'Dir::Etc::Preferences "{r}/etc/apt/preferences";',
        f'Dir::Etc::PreferencesParts "{r}/etc/apt/preferences.d";',
        "DPkg::Options {" + "".join(f'"{o}";' for o in dpkg) + "};",
    ]
    return "\n".join(lines) + "\n"


def dpkg_argv(host_root: Path) -> list[str]:
    r = str(host_root)
    return [
        "dpkg",
        f"--root={r}",
        f"--admindir={r}/var/lib/dpkg",
        f"--log={r}/var/log/dpkg.log",
        "--force-not-root",
        "--force-bad-path",
        "--force-script-chrootless",
    ]


def build_root(out: Path, repo: Path) -> None:
    """A pristine host root: the INSTALLED packages really installed by dpkg, indexes fetched."""
    for sub in (
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/lib/apt/lists/partial",
        "var/cache/apt/archives/partial",
        "var/log/apt",
        "etc/apt/apt.conf.d",
        "etc/apt/preferences.d",
        "etc/apt/sources.list.d",
        "var/run",
        "proc/sys/kernel/random",
    ):
        (out / sub).mkdir(parents=True)
    (out / "var/lib/dpkg/status").touch()
    (out / "var/lib/dpkg/available").touch()
    sources = [f"deb [trusted=yes] file:{repo} {codename} main\n" for codename in CODENAME.values()]
    (out / "etc/apt/sources.list").write_text("".join(sources))
    debs = [str(deb_path(repo, name, version)) for name, version in INSTALLED.items()]
    run([*dpkg_argv(out), "-i", *debs])
    conf = out.parent / f"{out.name}.apt.conf"
    conf.write_text(apt_config(out))
    env = {"APT_CONFIG": str(conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "update"], env=env)
    conf.unlink()
    for cache in (out / "var/cache/apt").glob("*.bin"):  # rebuilt by apt for each host's paths
        cache.unlink()


def packages(host_root: Path) -> dict[str, tuple[str, str]]:
    """`dpkg-query -W` on a host root: name -> (version, status: "ii", "iF" half-configured...)."""
    fmt = "${Package}\t${Version}\t${db:Status-Abbrev}\n"
    argv = ["dpkg-query", f"--admindir={host_root}/var/lib/dpkg", "-W", "-f", fmt]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rows = (line.split("\t") for line in out.splitlines())
    return {name: (version, status.strip()) for name, version, status in rows}


def installed(host_root: Path) -> dict[str, str]:
    """name -> version of every package dpkg calls installed ("ii")."""
    return {name: ver for name, (ver, status) in packages(host_root).items() if status == "ii"}
