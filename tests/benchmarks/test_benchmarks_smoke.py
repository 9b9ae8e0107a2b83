"""Smoke test of `python -m benchmarks --smoke`: every headline key is produced (a number, or None
with a reason), written atomically. It checks the plumbing, not the speed (that is the benchmark's
report, measured on a given machine). The PyTorch peer is skipped here (its venv takes a minute to
make): its keys must then be None with the reason. ~45 s on 2 cores (about a dozen small compiles,
four fresh processes, one of them restricted to one CPU): marked slow.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.suite import GOALS, REPORT_COLD_JSON, main

PEER_KEYS = {
    "torch_speedup_plain_d128",
    "torch_speedup_probed_d128",
    "seed_sweep_vs_torch",
    "sweep_speedup_plain_d128",
    "sweep_speedup_probed_d128",
}


@pytest.mark.slow
def test_smoke_run_produces_every_key(tmp_path):
    out = tmp_path / "results" / "smoke.json"
    returned = main(["--smoke", "--no-peer", "--json", str(out)])

    data = json.loads(out.read_text())
    assert (
        set(data["headline"])
        == set(GOALS)
        == {
            "torch_speedup_plain_d128",
            "torch_speedup_probed_d128",
            "probe_overhead",
            "flop_floor_ratio",
            "seed_sweep_vs_torch",
            "compile_ratio_192_over_6",
            "deep1000_seconds",
            "peak_rss_ratio",
            "sweep_speedup_plain_d128",
            "sweep_speedup_probed_d128",
            "first_probe_seconds_18L_encdec",
            "report_cold_seconds",
        }
    )
    for key, value in data["headline"].items():
        if key in PEER_KEYS:
            assert value is None and "--no-peer" in data["reasons"][key], (key, value)
        elif key == "report_cold_seconds" and not REPORT_COLD_JSON.is_file():  # measured by hand
            assert value is None and "benchmarks/report_cold.sh" in data["reasons"][key], (key, value)
        else:
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, value, data["reasons"])
            assert data["verdicts"][key] in ("MET", "MISSED", "reported")
    assert data["smoke"] is True and data["deep"]["finite"] and data["deep"]["rows"] > 0
    # time to a first result: the warm cache's process finds the cold one's numbers
    first = data["first_probe"]
    assert first["cold"]["value_sum"] == first["warm"]["value_sum"] and first["cold"]["rows"] > 0
    # the diagnostic beside the FLOP floor: the step's own product rate, and the floor ratio at it
    assert data["steps"]["step_matmul_gflops"] > 0
    for depth in (k for k in data["steps"] if k.isdigit()):
        row = data["steps"][depth]
        at_step_rate = row["flop_floor_ratio_at_step_matmul_rate"]
        ratio = data["steps"]["matmul_gflops"] / data["steps"]["step_matmul_gflops"]
        assert math.isclose(row["flop_floor_ratio"], at_step_rate * ratio, rel_tol=1e-9)
    # a sweep's throughput: two runs at once, lnscope's side measured without the peer too
    assert data["sweep_steps"]["streams"] == 2
    for depth in (k for k in data["steps"] if k.isdigit()):
        row = data["sweep_steps"][depth]
        for name in ("plain", "probed"):
            assert row[f"{name}_ms"] > 0 and row[f"{name}_one_ms"] > 0
            assert math.isclose(row[f"{name}_streams_gain"], row[f"{name}_one_ms"] / row[f"{name}_ms"], rel_tol=1e-9)
    # one core against every core: lnscope's steps in a process restricted to one CPU
    if data["machine"]["nproc"] >= 2:
        for depth in (k for k in data["steps"] if k.isdigit()):
            row = data["core_scaling"][depth]
            assert row["cpus"] == [data["core_scaling"]["cpu"]]
            assert row["plain_one_core_ms"] > 0 and row["probed_one_core_ms"] > 0
            assert math.isclose(
                row["plain_core_gain"], row["plain_one_core_ms"] / data["steps"][depth]["plain_ms"], rel_tol=1e-9
            )
            assert row["rounds"][0]["first_call_s"]["plain"] > 0  # each round's compile (or read-back) kept
    else:
        assert "no second core" in data["reasons"]["core_scaling"]
    assert data["headline"] == returned["headline"]
    assert not list(out.parent.glob("*.tmp")), "the temp file of the atomic write was left behind"
