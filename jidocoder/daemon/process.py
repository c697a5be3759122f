"""What every process the daemon makes does to itself: its title, its tie to the daemon, its
inherited descriptors and signals, and where its stack goes when it hangs.

Used by the template (once, inherited by every spare), by a spare forked straight from the
daemon (``spawn=fork``), and by the daemon itself for its own title.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
from pathlib import Path

from . import exits
from .logs import LOG_NAME

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # resolved once in the daemon, inherited


def set_process_name(name: str) -> None:
    """The name ``ps``/``top`` show (15 bytes at most): ``jido-template``, ``jido-1a2b3c4d``."""
    _PRCTL(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def set_parent_death_signal(daemon_pid: int) -> None:
    """SIGKILL when the daemon dies; exit now if it already has (prctl came too late)."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != daemon_pid:
        os._exit(exits.EXIT_OK)


def close_inherited_fds(keep: int) -> None:
    """Close every fd above stderr except ``keep`` (close_range(2) under the hood: cheap). An
    fd of another session or of a client held open here would hide that peer's EOF."""
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 20)


def reset_signals() -> None:
    """Default handlers back, and no inherited wakeup fd (it made a session's SIGTERM look like
    the daemon's own). SIGINT is ignored: a terminal's ^C is for the daemon, which then stops
    its sessions itself."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def dump_stack_on_sigusr1(state_dir: Path) -> int:
    """The daemon sends SIGUSR1 before killing a hung session: the stack goes to daemon.log.
    Returns the fd it writes to."""
    fd = os.open(Path(state_dir) / LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    faulthandler.register(signal.SIGUSR1, file=fd, all_threads=True, chain=False)
    return fd


def thread_count() -> int:
    """Threads of this process, as the kernel counts them (not only those ``threading`` made)."""
    with open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"Threads:"):
                return int(line.split()[1])
    return 1
