"""The Ray backend's tests (tests/ray), run on a multi-node Ray cluster inside a network
namespace of their own, where loopback is the only interface (benchmarks/ray_cluster.py)."""

from __future__ import annotations

import re
import sys

import pytest

from benchmarks.ray_cluster import run_in_own_netns

RAY_TESTS_SECONDS = 240  # a cluster up (~10 s here) and the tests, on 2 busy cores


@pytest.mark.timeout(RAY_TESTS_SECONDS + 30)
def test_the_ray_backend_passes_its_tests_on_a_multi_node_cluster_reaching_only_loopback():
    pytest.importorskip("ray", reason="the ray extra is not installed (scripts/test installs it)")
    done = run_in_own_netns([sys.executable, "-m", "pytest", "tests/ray", "-q", "-p", "no:cacheprovider",
                             "-W", "ignore::DeprecationWarning"],
                            RAY_TESTS_SECONDS, capture_output=True, text=True)
    output = done.stdout + done.stderr
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    assert done.returncode == 0, output[-6000:]
    assert re.search(r"\d+ passed", summary) and not re.search(r"failed|error|skipped", summary), output[-3000:]
