"""A jidocoder daemon the benchmark owns: temporary socket and state dir, its own process group.

``stop`` asks politely (SIGTERM, as a user's ``daemon stop`` would) and then SIGKILLs the whole
group, so that no session process can outlive the benchmark even if the daemon misbehaves.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from .common import kill_group

STARTED: list[BenchDaemon] = []  # every daemon of this run, for the last-resort cleanup


class BenchDaemon:
    def __init__(self, root: str | None = None, **settings: object) -> None:
        self.owns_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="jdb-", dir="/tmp")
        self.socket = os.path.join(self.root, "d.sock")
        self.state_dir = os.path.join(self.root, "state")
        self.settings = settings
        self.proc: subprocess.Popen | None = None
        self.start_seconds = float("nan")

    def command(self) -> list[str]:
        flags = []
        for name, value in self.settings.items():
            flags += ["--" + name.replace("_", "-"), str(value)]
        return [sys.executable, "-m", "jidocoder.cli", "daemon", "start", "--foreground", *flags]

    def start(self, timeout: float = 60.0) -> BenchDaemon:
        """Start and wait until the socket accepts a connection; ``start_seconds`` is that time."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("JIDOCODER_")}
        env.update(JIDOCODER_SOCKET=self.socket, JIDOCODER_STATE_DIR=self.state_dir)
        began = time.perf_counter()
        self.proc = subprocess.Popen(self.command(), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.root, "stderr"), "ab"),
                                     start_new_session=True)
        STARTED.append(self)
        deadline = time.monotonic() + timeout
        while not self._accepting():
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise RuntimeError("daemon did not accept connections in time")
            time.sleep(0.0005)
        self.start_seconds = time.perf_counter() - began
        return self

    def _accepting(self) -> bool:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        try:
            with open(os.path.join(self.root, "stderr"), errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM and wait; then SIGKILL the group whatever happened (sessions included)."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            kill_group(self.proc.pid)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self in STARTED:
                STARTED.remove(self)

    def remove(self) -> None:
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


def stop_all() -> None:
    """Last resort, from the driver's ``finally``: nothing of any daemon is left."""
    for daemon in list(STARTED):
        try:
            daemon.stop(timeout=5.0)
        finally:
            daemon.remove()
