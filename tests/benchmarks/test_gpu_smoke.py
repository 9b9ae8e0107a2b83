"""Smoke test of `python -m benchmarks.gpu --smoke --no-peer` (the accelerator goals' benchmark, run
here on the CPU backend): every headline key is produced, the peer's as None without the peer, the
ratios are the ones of the rows they summarize, and the file is written atomically. Plumbing only:
the numbers are the device's (benchmarks/README.md). ~30 s (four small compiles): marked slow."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.gpu import GOALS, SMOKE, Step, bench_seed_sweep, main, verdict

PEER_KEYS = {"torch_speedup_plain_gpu", "torch_speedup_probed_gpu", "seed_sweep_vs_torch_gpu"}


@pytest.mark.slow
def test_smoke_run_produces_every_key(tmp_path):
    out = tmp_path / "gpu" / "smoke.json"
    returned = main(["--smoke", "--no-peer", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["headline"] == returned["headline"]
    assert set(data["headline"]) == set(GOALS)
    for key, value in data["headline"].items():
        if key in PEER_KEYS:
            assert value is None and data["verdicts"][key] == "not measured", key
        else:
            assert value is not None and math.isfinite(value) and value > 0, key
    rows = data["steps"].values()
    assert data["headline"]["probe_overhead_gpu"] == max(r["probed_ms"] / r["plain_ms"] for r in rows)
    sweep = data["seed_sweep"]
    assert math.isclose(data["headline"]["seed_sweep_vmap_over_loop"], sweep["loop_s"] / sweep["vmapped_s"])
    assert not list(out.parent.glob("*.tmp")), "the temp file of the atomic write was left behind"


def test_verdicts_follow_the_goals_direction():
    assert verdict("torch_speedup_plain_gpu", 3.0) == "MET" and verdict("torch_speedup_plain_gpu", 2.9) == "MISSED"
    assert verdict("probe_overhead_gpu", 1.1) == "MET" and verdict("probe_overhead_gpu", 1.2) == "MISSED"
    assert verdict("seed_sweep_vmap_over_loop", None) == "not measured"
    # the vmapped seeds' goal is against the peer's loop (issue 26); lnscope's own loop is reported
    assert verdict("seed_sweep_vmap_over_loop", 2.0) == "reported"
    assert verdict("seed_sweep_vs_torch_gpu", 5.0) == "MET" and verdict("seed_sweep_vs_torch_gpu", 4.9) == "MISSED"


def test_a_failing_peer_leaves_its_keys_none_with_the_reason(tmp_path):
    """A python without the peer's torch: lnscope's numbers stand, the peer's keys are None."""
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no torch here' >&2\nexit 1\n")
    broken.chmod(0o755)
    out = bench_seed_sweep(SMOKE, str(broken), "cpu")
    assert out["loop_s"] > 0 and out["vmapped_s"] > 0
    assert "torch_s" not in out and "PeerUnavailable" in out["peer_reason"]


def test_a_step_longer_than_the_positions_is_refused_before_compute():
    with pytest.raises(ValueError, match="seq must be in 1..128.*got 256"):
        Step(6, 128, 8, 256)
