"""Suite-wide guards: no process the suite started survives it, and the test process leaks no fd."""

from __future__ import annotations

import os

import pytest

from benchmarks.common import processes_with_env
from benchmarks.ray_cluster import in_own_netns
from tests.support import TEMP_PREFIX, children_of, process_alive


def pytest_ignore_collect(collection_path, config):
    """tests/ray runs only inside a network namespace of its own, started for it by
    tests/integration/test_ray_cluster.py (its clusters must reach nothing but loopback)."""
    if collection_path.name == "ray" and collection_path.parent.name == "tests":
        return not in_own_netns() or None
    return None


def suite_daemons() -> set[int]:
    """Live jidocoder processes whose socket lives in a directory this run made (/tmp/jd-<pid>-*),
    wherever they are in the process tree (a background daemon is nobody's child)."""
    return processes_with_env(b"JIDOCODER_SOCKET=" + TEMP_PREFIX.encode())


@pytest.fixture(autouse=True, scope="session")
def no_stray_processes_or_fds():
    children_before = set(children_of(os.getpid()))
    daemons_before = suite_daemons()
    fds_before = len(os.listdir("/proc/self/fd"))
    yield
    left = [pid for pid in set(children_of(os.getpid())) - children_before if process_alive(pid)]
    assert left == [], f"processes started by the suite are still alive: {left}"
    assert suite_daemons() - daemons_before == set(), "a daemon or session process of the suite survived it"
    assert len(os.listdir("/proc/self/fd")) == fds_before, "the test process leaks file descriptors"
