"""``scripts/soak --quick`` passes: session kills, daemon kills and a wire fuzz under writers lose,
duplicate and reorder no acknowledged message, leave no orphan, and the daemon survives.

The soak runs as its own process in a directory of this run, so the suite's guard (conftest.py)
also sees any daemon it would leave behind; it is asked to stop with SIGTERM (it then stops
every process it started) and only SIGKILLed, by pid, if it does not.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support import LONG, remove_tree, short_tempdir

ROOT = Path(__file__).resolve().parents[2]
SOAK_DEADLINE = 100.0  # the quick soak takes ~30 s here; this only bounds a hang


@pytest.mark.timeout(150)
def test_quick_soak_loses_duplicates_and_reorders_nothing_and_leaves_no_orphan():
    scratch = short_tempdir()
    out = scratch / "soak.json"
    proc = subprocess.Popen([str(ROOT / "scripts" / "soak"), "--quick", "--json", str(out),
                             "--dir", str(scratch)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=SOAK_DEADLINE)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the soak unwinds and stops its daemon
        try:
            output, _ = proc.communicate(timeout=LONG)
        finally:
            proc.kill()
            proc.wait()
        pytest.fail(f"the quick soak did not finish in {SOAK_DEADLINE} s:\n{output[-3000:]}")
    try:
        assert proc.returncode == 0, output[-3000:]
        figures = json.loads(out.read_text())
        zero = {name: figures[name] for name in ("lost", "duplicated", "out_of_order", "orphans",
                                                 "refused_but_applied", "foreign", "unreadable_sessions")}
        assert zero == dict.fromkeys(zero, 0), output[-3000:]
        assert figures["acknowledged"] > 0 and figures["session_kills"] > 0
        assert figures["daemon_kills"] > 0 and figures["fuzz_connections"] > 0
        assert figures["daemon_alive"] and figures["answers_list_sessions"]
        assert figures["stop_exit_code"] == 0
    finally:
        remove_tree(scratch)
