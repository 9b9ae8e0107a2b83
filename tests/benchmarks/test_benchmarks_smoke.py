"""Smoke test of `python -m benchmarks.run --quick`: it runs end to end and writes the three ratios.

It asserts that the JSON holds finite numbers, not that the goals are met (that is the benchmark's
report, measured on a given machine). Marked slow: the quick run still compiles the probe program
about ten times (several minutes on a 2-core machine), far over the 60 s of the fast tier.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.run import GOALS, main

RATIOS = ("probe_overhead", "compile_depth", "seed_vmap_speedup")


@pytest.mark.slow
def test_quick_benchmark_writes_finite_ratios(tmp_path):
    out = tmp_path / "results" / "quick.json"
    returned = main(["--quick", "--out", str(out)])

    data = json.loads(out.read_text())
    assert set(RATIOS) == set(GOALS)
    for name in RATIOS:
        ratio = data["ratios"][name]
        assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0, (name, ratio)
        assert isinstance(data["pass"][name], bool)
    assert data["quick"] is True
    assert data["ratios"] == returned["ratios"]
    assert not list(out.parent.glob("*.tmp")), "the temp file of the atomic write was left behind"
