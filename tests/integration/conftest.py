from __future__ import annotations

import pytest

from tests.support import DaemonProcess, process_alive, remove_tree, short_tempdir, zombies_among_children


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
    for daemon in started:
        if daemon.proc.poll() is None:
            assert zombies_among_children(daemon.pid) == []
            daemon.stop()
        else:
            daemon.kill()
        assert not process_alive(daemon.pid)
    for root in roots:
        remove_tree(root)


@pytest.fixture
def daemon(daemon_factory) -> DaemonProcess:
    return daemon_factory()


@pytest.fixture
def client(daemon):
    with daemon.client() as c:
        yield c
