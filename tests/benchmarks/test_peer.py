"""The peer's process plumbing, with a stand-in for the peer's python (the real venv takes a minute
to make and is the full benchmark's): arguments passed, results parsed, copies run at once, a
failure named."""

from __future__ import annotations

import json
import stat
import time

import pytest

from benchmarks import peer

# Stands in for the peer venv's python: it is called as `python SCRIPT ARGS...`, sleeps, and prints
# the peer's JSON line with its arguments, pid and start/end times.
FAKE = """#!/usr/bin/env python3
import json, os, sys, time
start = time.time()
time.sleep({sleep})
if "--fail" in os.environ.get("FAKE_PEER", ""):
    print("a traceback", file=sys.stderr); print("RuntimeError: the peer broke", file=sys.stderr); sys.exit(1)
timing = lambda ms: {{"median_step_ms": ms, "median_runq_wait_ms": 0.0}}
print("warming up")
print(json.dumps({{"timing_off": timing(10.0), "timing_on": timing(12.5), "torch": "2.9.0+cpu",
                  "argv": sys.argv[1:], "pid": os.getpid(), "start": start, "end": time.time()}}))
"""


def _fake_python(tmp_path, sleep: float):
    path = tmp_path / "python"
    path.write_text(FAKE.format(sleep=sleep))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_copies_run_at_once(tmp_path):
    python = _fake_python(tmp_path, sleep=1.0)
    args = peer._train_args(layers=18, d_model=128, batch=8, seq=64, steps=10, warmup=2, threads=1)
    start = time.perf_counter()
    runs = peer._run_at_once(python, "torch_probe_bench.py", args, copies=2, timeout=60)
    wall = time.perf_counter() - start
    assert len(runs) == 2 and len({r["pid"] for r in runs}) == 2
    # at once: each started before the other ended (one after the other would take >= 2 s)
    assert max(r["start"] for r in runs) < min(r["end"] for r in runs) and wall < 1.9, wall
    argv = runs[0]["argv"]
    assert argv[0].endswith("torch_probe_bench.py")
    assert argv[argv.index("--threads") + 1] == "1" and argv[argv.index("--layers") + 1] == "18"


def test_step_times_reads_the_peer_medians(tmp_path):
    python = _fake_python(tmp_path, sleep=0.0)
    one = peer.train_steps(python, layers=6, d_model=128, batch=8, seq=64, steps=10, warmup=2)
    assert one == {"plain_ms": 10.0, "probed_ms": 12.5, "runq_wait_ms": 0.0, "torch": "2.9.0+cpu"}
    both = peer.train_steps_at_once(python, copies=2, layers=6, d_model=128, batch=8, seq=64, steps=10, warmup=2)
    assert both == [one, one]


def test_a_failing_copy_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_PEER", "--fail")
    python = _fake_python(tmp_path, sleep=0.0)
    with pytest.raises(peer.PeerUnavailable, match="torch_probe_bench.py failed.*the peer broke"):
        peer.train_steps_at_once(python, copies=2, layers=6, d_model=128, batch=8, seq=64, steps=10, warmup=2)


def test_sweep_row_takes_the_peers_better_way_to_run_two():
    from benchmarks.suite import sweep_row

    times = {"plain": [0.040, 0.050, 0.045], "probed": [0.050] * 3, "plain_one": [0.080] * 3, "probed_one": [0.090] * 3}
    # two one-thread processes at once: per model-step (mean of their medians) / 2 = 45 / 60 ms, median over rounds
    rounds = [[{"plain_ms": 90.0, "probed_ms": 110.0}, {"plain_ms": 90.0, "probed_ms": 130.0}],
              [{"plain_ms": 200.0, "probed_ms": 240.0}, {"plain_ms": 200.0, "probed_ms": 240.0}],
              [{"plain_ms": 80.0, "probed_ms": 100.0}, {"plain_ms": 100.0, "probed_ms": 140.0}]]  # fmt: skip
    row = sweep_row(times, rounds, {"torch_plain_ms": 70.0, "torch_probed_ms": 55.0})
    assert row["plain_ms"] == pytest.approx(45.0) and row["plain_streams_gain"] == pytest.approx(80 / 45)
    assert row["torch_plain_at_once_ms"] == pytest.approx(45.0) and row["torch_probed_at_once_ms"] == pytest.approx(60.0)
    # plain: two at once is the peer's better way (45 < 70); probed: one run on two threads (55 < 60)
    assert row["torch_plain_best_ms"] == pytest.approx(45.0) and row["torch_probed_best_ms"] == pytest.approx(55.0)
    assert row["sweep_speedup_plain"] == pytest.approx(1.0) and row["sweep_speedup_probed"] == pytest.approx(55 / 50)
    assert "sweep_speedup_plain" not in sweep_row(times, [], {"torch_plain_ms": 70.0})


def test_headline_sweep_keys_take_the_smaller_depth():
    from benchmarks.suite import headline

    rows = {"streams": 2, "6": {"sweep_speedup_plain": 1.3, "sweep_speedup_probed": 1.1},
            "18": {"sweep_speedup_plain": 1.2, "sweep_speedup_probed": 1.4}}  # fmt: skip
    keys = headline({"sweep_steps": rows})
    assert keys["sweep_speedup_plain_d128"] == 1.2 and keys["sweep_speedup_probed_d128"] == 1.1
    del rows["18"]["sweep_speedup_probed"]  # one depth without the peer: no key
    assert headline({"sweep_steps": rows})["sweep_speedup_probed_d128"] is None


def test_a_missing_key_gets_the_reason_of_its_first_failed_source():
    from benchmarks.suite import GOALS, SOURCES, missing_reasons

    assert set(SOURCES) == set(GOALS)
    keys = dict.fromkeys(GOALS, 1.0) | {"sweep_speedup_plain_d128": None, "torch_speedup_plain_d128": None}
    reasons = {"peer": "skipped (--no-peer)", "sweep_steps": "RuntimeError: boom"}
    missing_reasons(keys, reasons)
    assert reasons["sweep_speedup_plain_d128"] == "RuntimeError: boom"  # its own part failed first
    assert reasons["torch_speedup_plain_d128"] == "skipped (--no-peer)"
    assert "probe_overhead" not in reasons  # measured: no reason
    reasons = {"peer": "no peer venv"}
    missing_reasons({"sweep_speedup_probed_d128": None}, reasons)
    assert reasons["sweep_speedup_probed_d128"] == "no peer venv"
