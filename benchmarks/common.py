"""Helpers shared by the floor programs and the drivers: statistics, /proc readings, cleanup.

Nothing here knows jidocoder: the floors import this module too, and must stay free of its logic.
"""

from __future__ import annotations

import math
import os
import signal
import time

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def smaps_rollup(pid: int) -> dict[str, int]:
    """/proc/<pid>/smaps_rollup in kB, keyed by field name (Pss, Private_Clean, ...)."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1])
    return values


def uss_pss_mb(pid: int) -> tuple[float, float]:
    """Unique (Private_Clean + Private_Dirty) and proportional set size of ``pid``, in MB."""
    m = smaps_rollup(pid)
    return (m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)) / 1024, m.get("Pss", 0) / 1024


# Seconds of idleness before each sample of an "isolated" figure (one create, one kill) and of
# its floor, measured the same way: on this virtual machine a process woken after idling pays
# far more than one woken back to back (kill → EOF: 0.7 ms back to back, 1.9 ms after 10 ms).
PAUSE = 0.02


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != b"Z":
                found.append(int(entry))
    return found


HELPER_NAMES = (b"jido-template", b"jido-spare")  # the daemon's children that serve no session


def session_processes(daemon_pid: int) -> list[int]:
    """The daemon's live children that are session processes (not its template or spares)."""
    found = []
    for pid in children_of(daemon_pid):
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                if f.read().strip() not in HELPER_NAMES:
                    found.append(pid)
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def set_parent_death_signal() -> None:
    """In a forked child: die with the parent, so an interrupted floor leaves nothing behind."""
    import ctypes
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def kill_group(pgid: int, grace: float = 0.0) -> None:
    """SIGTERM (if grace) then SIGKILL every process of a group; silent if it is gone."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 0.0)):
        if signum == signal.SIGTERM and grace <= 0:
            continue
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.01)


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def close_other_fds(keep: int) -> None:
    """In a forked child: close every inherited fd above stderr but ``keep`` (as a session does),
    so a sibling's socket held here cannot hide that sibling's EOF."""
    os.closerange(3, keep)
    os.closerange(keep + 1, 1 << 16)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_KB / 1024


def processes_with_env(prefix: bytes) -> set[int]:
    """Live processes with an initial environment entry starting with ``prefix`` (for example
    ``JIDOCODER_SOCKET=<ours>``).

    Every process a daemon forks inherits its environment, so this finds the daemon and all its
    children wherever they were re-parented after the daemon died, and nothing of anyone else.
    """
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if any(item.startswith(prefix) for item in environ.split(b"\0")) and alive(int(entry)):
            found.add(int(entry))
    return found


def rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/<pid>/status), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")
