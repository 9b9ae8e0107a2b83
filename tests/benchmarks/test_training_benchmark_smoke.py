"""Smoke test of `python -m benchmarks.training --smoke`: it runs end to end and writes every number.

It asserts finite, positive numbers, not that the 5% goal is met (that is the benchmark's report,
measured on a given machine; see benchmarks/README.md). The smoke config uses the training tests'
tiny shapes, so the suite's compilation cache serves most of it.
"""

from __future__ import annotations

import json
import math

from benchmarks.training import main


def test_training_benchmark_smoke_writes_every_number(tmp_path):
    out = tmp_path / "results" / "training.json"
    returned = main(["--smoke", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["smoke"] is True and data == json.loads(json.dumps(returned))
    for key in (
        "probe_every_10_over_plain",
        "probe_every_10_no_cka_over_plain",
        "probe_every_step_over_plain",
        "tokens_per_second_plain",
        "tokens_per_second_probe_every_10",
    ):
        assert isinstance(data[key], float) and math.isfinite(data[key]) and data[key] > 0, key
    assert set(data["seconds_per_10_updates"]) == {"plain", "probed", "no_cka", "every"}
    assert isinstance(data["pass"], bool) and data["goal"] == 1.05
    assert not list(out.parent.glob("*.tmp")), "the temp file of the atomic write was left behind"
