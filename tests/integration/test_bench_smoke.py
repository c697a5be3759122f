"""``scripts/bench --quick`` finishes and reports every row with a finite figure, floor and ratio.

Nothing about speed is asserted: timed assertions on a shared machine are flaky, and the
targets are judged by the full run (docs/benchmarks.md), not by the test suite.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_quick_bench_reports_every_row_with_finite_figure_floor_and_ratio(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([str(ROOT / "scripts" / "bench"), "--quick", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert rows, "no rows"
    bad = [row for row in rows
           if not all(isinstance(row.get(key), (int, float)) and math.isfinite(row[key])
                      for key in ("figure", "floor", "ratio"))]
    assert bad == [], f"rows without a finite figure, floor and ratio: {bad}"
    for row in rows:
        assert row["name"] in done.stdout  # the printed table has the same rows
