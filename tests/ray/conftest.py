"""One multi-node Ray cluster for the Ray backend's tests, in this network namespace of its own
(tests/integration/test_ray_cluster.py starts this directory's run in it)."""

from __future__ import annotations

import logging
import os

import pytest

from benchmarks.ray_cluster import LocalCluster, listening_addresses, off_loopback
import signal
from typing import Any

from tests.support import LONG, DaemonProcess, children_of, process_alive, short_tempdir


@pytest.fixture(autouse=True, scope="session")
def no_stray_processes_or_fds():
    """The suite's guard (tests/conftest.py), less its count of the test process's fds: Ray's
    driver library keeps fds of its own after ``ray.shutdown()`` (its gRPC epolls, eventfds,
    timerfds and log files: 14 here), which are not ours to close. Our own code's fds are
    counted around each test instead (``backend``)."""
    children_before = set(children_of(os.getpid()))
    yield
    left = [pid for pid in set(children_of(os.getpid())) - children_before if process_alive(pid)]
    assert left == [], f"processes started by the suite are still alive: {left}"


@pytest.fixture(scope="session")
def cluster():
    import ray
    cluster = LocalCluster(nodes=2)
    try:
        ray.init(address=cluster.address, namespace="jidocoder-tests", log_to_driver=False,
                 logging_level=logging.WARNING)
        assert off_loopback(listening_addresses()) == set()
        yield cluster
        assert off_loopback(listening_addresses()) == set()
    finally:
        survivors = cluster.shutdown()
    assert survivors == [], f"processes of the cluster outlived its shutdown: {survivors}"


@pytest.fixture
def backend(cluster):
    from jidocoder.daemon.ray_backend import RayBackend
    fds_before = open_fds()
    backend = RayBackend(cluster.address)
    yield backend
    backend.close()
    assert open_fds() - fds_before == set(), "the backend leaks file descriptors"


def open_fds() -> set[tuple[str, str]]:
    """The test process's fds, less its TCP sockets: those are Ray's gRPC channels to the
    actors' workers, which Ray keeps or closes as it likes (our code opens no TCP socket)."""
    found, tcp = set(), tcp_inodes()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own fd, closed since
            continue
        if target.removeprefix("socket:[").rstrip("]") not in tcp:
            found.add((fd, target))
    return found


def tcp_inodes() -> set[str]:
    inodes = set()
    for name in ("tcp", "tcp6"):
        with open(f"/proc/net/{name}") as f:
            inodes.update(line.split()[9] for line in f.readlines()[1:])
    return inodes


@pytest.fixture
def ray_daemon(cluster):
    """Daemons with ``--backend ray`` on the cluster; each stopped at teardown, its actors gone."""
    started: list[DaemonProcess] = []

    def start(root=None, **settings: Any) -> DaemonProcess:
        daemon = DaemonProcess(root or short_tempdir(), backend="ray", ray_address=cluster.address,
                               **settings)
        daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.proc.wait(LONG)
        daemon.proc.stderr.close()
