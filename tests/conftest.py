"""Suite-wide guards: no process the suite started survives it."""

from __future__ import annotations

import os

import pytest

from tests.support import children_of, process_alive


@pytest.fixture(autouse=True, scope="session")
def no_stray_processes():
    before = set(children_of(os.getpid()))
    yield
    left = [pid for pid in set(children_of(os.getpid())) - before if process_alive(pid)]
    assert left == [], f"processes started by the suite are still alive: {left}"
