from __future__ import annotations

import contextlib
import os
import signal

import pytest

from tests.support import SHORT, DaemonProcess, process_alive, remove_tree, short_tempdir, zombies_among_children


@pytest.fixture
def daemon_factory():
    """Start real daemons (own process group, temporary socket and state dir); every one is
    stopped at teardown, and none of its session processes may outlive it."""
    started: list[DaemonProcess] = []
    roots = []

    def start(root=None, **settings) -> DaemonProcess:
        if root is None:
            root = short_tempdir()
            roots.append(root)
        daemon = DaemonProcess(root, **settings).start()
        started.append(daemon)
        return daemon

    yield start
    # Every daemon is stopped before anything is asserted: one failure must not leave the
    # others (and their sessions) running.
    problems = []
    for daemon in started:
        problems += end_daemon(daemon)
    for root in roots:
        remove_tree(root)
    assert problems == []


def end_daemon(daemon: DaemonProcess) -> list[str]:
    """Stop ``daemon`` (SIGKILL its process group if that fails); what was wrong, as text."""
    problems = []
    try:
        if daemon.proc.poll() is None:
            problems += [f"zombie {pid} under daemon {daemon.pid}" for pid in zombies_among_children(daemon.pid)]
            daemon.stop()
        else:
            daemon.kill()
    except Exception as exc:  # noqa: BLE001 - reported after every daemon is stopped
        problems.append(f"daemon {daemon.pid} did not stop cleanly: {exc!r}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(daemon.pid, signal.SIGKILL)  # its own process group: it and its sessions
        with contextlib.suppress(Exception):
            daemon.proc.wait(SHORT)
    if process_alive(daemon.pid):
        problems.append(f"daemon {daemon.pid} is still alive")
    return problems


@pytest.fixture
def daemon(daemon_factory) -> DaemonProcess:
    return daemon_factory()


@pytest.fixture
def client(daemon):
    with daemon.client() as c:
        yield c
