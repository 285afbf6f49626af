"""How ktlo starts the processes a step runs (shell commands, command checks, backup tools).

Each gets its own process group, so a timeout or cancellation kills everything it started,
and is killed by the kernel when the ktlo process that started it dies (`kill -9` of
`ktlo run`, a crashed flow-run process): without that, a `sleep 3600` outlives its run with
parent 1 and nobody waits for it. Linux's parent-death signal (prctl PR_SET_PDEATHSIG) is
set in the child between fork and exec. It reaches the direct child only: a command that
forks (a `shell: true` pipeline) loses its own children's guard, as with any supervisor.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1

try:
    _prctl: Any = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: a process group only
    _prctl = None


def _die_with(parent: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child, after fork, before exec
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def child_options() -> dict[str, Any]:
    """Keyword arguments for `subprocess.Popen` / `asyncio.create_subprocess_exec`."""
    options: dict[str, Any] = {"start_new_session": True}
    if _prctl is not None:
        options["preexec_fn"] = _die_with(os.getpid())
    return options


def lock_is_free(path: Path) -> bool:
    """`path` exists and no process holds an flock on it: whoever held it has died.

    The kernel drops a process's flocks however it ends, so this tells a dead owner from a
    live one with no pid to be reused.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return True


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs: a zombie (dead, not yet reaped) counts as gone, and
    one that is this process's own exited child is reaped on the way."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")
