"""The only copy of the test helpers: deadlines, waiting on conditions, processes, fds.

Every wait has a deadline from SHORT or LONG; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import shutil
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, TypeVar
from collections.abc import Callable

from benchmarks.common import rss_kib  # noqa: F401  re-exported: tests read RSS as the benchmarks do
from jidocoder import Client, wire

SHORT = 5.0   # something that should happen at once
LONG = 30.0   # something that involves many processes
EXPIRES = 0.2  # a wait that is meant to run out (a test of a timeout): short, to keep tests fast

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = SHORT, message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(delay)  # polling interval of a deadline wait, not synchronisation
        delay = min(delay * 2, 0.05)


def process_alive(pid: int) -> bool:
    """True for a live process; a zombie counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (FileNotFoundError, ProcessLookupError):
        return None


def children_of(pid: int) -> list[int]:
    """Direct children (any state, zombies included)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


HELPER_NAMES = ("jido-template", "jido-spare")  # the daemon's children that serve no session


def process_name(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return None


def session_processes(daemon_pid: int) -> list[int]:
    """The daemon's children that are session processes: named ``jido-<8 hex>`` once they
    begin their session (not the template or a spare, nor a child not named yet: a template
    just forked still has the daemon's name, a spare just cloned the template's)."""
    return [pid for pid in children_of(daemon_pid) if is_session_name(process_name(pid))]


def is_session_name(name: str | None) -> bool:
    return name is not None and name.startswith("jido-") and name not in HELPER_NAMES


def zombies_among_children(pid: int) -> list[int]:
    return [child for child in children_of(pid) if process_state(child) == "Z"]


def fd_count(pid: int | str = "self") -> int:
    """Open descriptors of a process (of this one by default)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def contents(client: Client, session_id: str) -> list[str]:
    """The session's conversation, as its messages' contents."""
    return [m.content for m in client.get_conversation_history(session_id)]


def check_settled(outcomes: dict[str, str], stored: list[str], writers: int, each: int) -> None:
    """Writers ``t{w}-{i}`` whose session was killed mid-stream: every call settled ("stored",
    or "crashed": begun, stored or not), none stored twice, nothing stored that was not sent,
    and each writer's calls applied in the order it made them."""
    assert len(outcomes) == writers * each
    assert len(stored) == len(set(stored))
    assert {c for c, how in outcomes.items() if how == "stored"} <= set(stored)
    assert set(stored) <= set(outcomes)
    for w in range(writers):
        mine = [int(c.split("-")[1]) for c in stored if c.startswith(f"t{w}-")]
        assert mine == sorted(mine)


def info_of(client: Client, session_id: str):
    """The session's listed info: reading it is not a call to the session (its status stays)."""
    return next(i for i in client.list_sessions() if i.session_id == session_id)


# Directories of this test run: the pid tells them from another run's on the same machine.
TEMP_PREFIX = f"/tmp/jd-{os.getpid()}-"


def short_tempdir() -> Path:
    """A directory with a short path (a Unix socket path must fit in 107 bytes), of this run."""
    return Path(tempfile.mkdtemp(prefix=Path(TEMP_PREFIX).name, dir="/tmp"))


class DaemonProcess:
    """A real daemon in its own process group, started in the foreground so its pid is ours."""

    def __init__(self, root: Path, **settings: Any) -> None:
        self.root = root
        self.socket = str(root / "d.sock")
        self.state_dir = root / "state"
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.seen_pids: set[int] = set()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIDOCODER_")}
        env.update(JIDOCODER_SOCKET=self.socket, JIDOCODER_STATE_DIR=str(self.state_dir))
        return env

    def flags(self) -> list[str]:
        """The settings as flags; the debug_* operations are on unless ``debug_ops=False``
        (only the flag turns them on: docs/api.md §8)."""
        flags = []
        for name, value in {"debug_ops": True, **self.settings}.items():
            flags += ["--" + name.replace("_", "-"), str(value)]
        return flags

    def start(self) -> DaemonProcess:
        command = [sys.executable, "-m", "jidocoder.cli", "daemon", "start", "--foreground", *self.flags()]
        self.proc = subprocess.Popen(command, env=self.env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        wait_until(self._accepting, LONG, "the daemon to accept connections")
        return self

    def _accepting(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}: "
                                 f"{self.proc.stderr.read().decode()}")
        try:
            Client(self.socket, timeout=SHORT).close()
        except Exception:  # noqa: BLE001 - any failure to connect means not ready yet
            return False
        return True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.socket, timeout=timeout)

    def session_pids(self) -> list[int]:
        """Its session processes now; every child seen (template and spares too) is remembered,
        so that ``kill`` waits for all of them."""
        self.seen_pids.update(children_of(self.pid))
        return session_processes(self.pid)

    def stop(self, timeout: float = LONG) -> int:
        """SIGTERM, wait; returns the exit code. Every session process seen must be gone."""
        self.session_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            self.kill()
        return code

    def kill(self) -> None:
        """SIGKILL the daemon (if alive) and reap it; then wait for its sessions to follow."""
        self.session_pids()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(SHORT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        wait_until(lambda: not any(process_alive(p) for p in self.seen_pids), SHORT,
                   "the daemon's session processes to exit")

    def log_text(self) -> str:
        path = self.state_dir / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def take_events(client: Client, count: int, timeout: float = SHORT) -> list:
    """Exactly the next ``count`` events of ``client``; fails if they do not all come in time."""
    deadline = time.monotonic() + timeout
    events = []
    while len(events) < count:
        event = client.next_event(max(0.0, deadline - time.monotonic()))
        if event is None:
            raise AssertionError(f"timed out after {timeout}s with {len(events)} of {count} events: "
                                 f"{[(e.type, e.topic) for e in events]}")
        events.append(event)
    return events


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (/proc/<pid>/stat), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


ROOT = Path(__file__).resolve().parents[1]


def run_cli(socket_path: str, *args: str, state_dir: str | Path | None = None, stdin: str | None = None,
            timeout: float = LONG) -> subprocess.CompletedProcess:
    """``jidocoder ARGS`` as a person runs it, against ``socket_path`` (and ``state_dir``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JIDOCODER_")}
    env["JIDOCODER_SOCKET"] = socket_path
    if state_dir is not None:
        env["JIDOCODER_STATE_DIR"] = str(state_dir)
    return subprocess.run([sys.executable, "-m", "jidocoder.cli", *args], env=env, cwd=ROOT,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


class Tmux:
    """A command on a terminal of its own: a tmux server on a private socket (``-L``), one
    window of ``width`` x ``height``. ``close`` ends the server by its pid, and checks it went."""

    def __init__(self, command: list[str], env: dict[str, str], width: int = 200, height: int = 40) -> None:
        if shutil.which("tmux") is None:
            raise AssertionError("these tests drive a terminal with tmux, which is not installed: "
                                 "apt-get install tmux (Debian/Ubuntu) or dnf install tmux")
        self.name = f"jd-test-{os.getpid()}-{time.monotonic_ns()}"
        shell = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k.startswith("JIDOCODER_"))
        program = " ".join(shlex.quote(part) for part in command)
        # the terminal's size, not the test run's: curses believes COLUMNS and LINES first
        line = f"env -u COLUMNS -u LINES {shell} {program}; echo EXITED $?; sleep 600"
        self._tmux("-f", "/dev/null", "new-session", "-d", "-x", str(width), "-y", str(height), line)
        self.server_pid = int(self._tmux("display-message", "-p", "#{pid}").strip())
        self.pane_pid = int(self._tmux("display-message", "-p", "#{pane_pid}").strip())

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True,
                              check=True, timeout=SHORT, cwd=ROOT).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def wait_for(self, predicate: Callable[[str], bool], message: str, timeout: float = LONG) -> str:
        """The screen once ``predicate`` holds for it; fails with the last screen shown."""
        seen = [""]

        def check() -> bool:
            seen[0] = self.screen()
            return predicate(seen[0])
        try:
            wait_until(check, timeout, message)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen was:\n{seen[0]}") from None
        return seen[0]

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True, timeout=SHORT)
        wait_until(lambda: not process_alive(self.server_pid), SHORT, "the tmux server to exit")


def debug(client: Client, op: str, session_id: str, **args: Any) -> Any:
    """A ``debug_*`` op (a daemon started with ``debug_ops``)."""
    return client._call(op, {"session_id": session_id, **args})


def send_kept_and_dropped_while_busy(daemon: Any, session: str, pid: int) -> None:
    """While ``session``'s process ``pid`` is busy in a 2 s ``debug_hang``, a client that stays
    sends "kept" and one that closes at once sends "dropped" (both relayed, by hand); returns
    once the busy call returned and "kept" was answered (API.md §10: "dropped" never is)."""
    spent = cpu_seconds(pid)
    outcome: list = []

    def busy() -> None:
        with daemon.client(timeout=LONG) as own:
            debug(own, "debug_hang", session, seconds=2)
            outcome.append("returned")
    busier = threading.Thread(target=busy)
    busier.start()
    try:
        wait_until(lambda: cpu_seconds(pid) > spent + 0.2, SHORT, "the session to be busy")
        with raw_message(daemon.socket, session, "kept") as stays:
            with raw_message(daemon.socket, session, "dropped"):
                pass  # closed at once
            busier.join(LONG)
            assert outcome == ["returned"]
            stays.settimeout(LONG)
            assert "result" in wire.read_frame(stays, 1 << 20)
    finally:
        busier.join(LONG)


def raw_message(socket_path: str, session: str, content: str) -> socket.socket:
    """A connection of its own that sent ``send_message`` (id 1) by hand, relayed, with no
    hello and no deadline; the caller closes it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    wire.write_frame(sock, {"id": 1, "op": "send_message", "args": {
        "session_id": session, "role": "user", "content": content}}, 1 << 20)
    return sock
