"""The peer's process plumbing, with a stand-in for the peer's python (the real venv takes a minute
to make and is the full benchmark's): arguments passed, results parsed, copies run at once, a
failure named. Where a test is about the peer failing beside lnscope's steps, those steps are
stand-ins too: their real runs are test_benchmarks_smoke.py's."""

from __future__ import annotations

import math
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
mode = os.environ.get("FAKE_PEER", "")
if mode == "fail":
    print("a traceback", file=sys.stderr); print("RuntimeError: the peer broke", file=sys.stderr); sys.exit(1)
if mode == "garbled":
    print("no json here"); sys.exit(0)
if mode == "nosteps":
    print(json.dumps({{"torch": "2.9.0+cpu"}})); sys.exit(0)
if mode == "hang":
    time.sleep(60)
timing = lambda ms: {{"median_step_ms": ms, "median_runq_wait_ms": 0.0}}
print("warming up")
print("x" * 100_000, file=sys.stderr)  # more than a pipe holds: must not stall the copies
end = time.time()
print(json.dumps({{"timing_off": timing(10.0), "timing_on": timing(12.5), "torch": "2.9.0+cpu",
                  "timed_window_unix_s": [1000.0, 1010.0], "argv": sys.argv[1:], "pid": os.getpid(),
                  "start": start, "end": end, "cpus": sorted(os.sched_getaffinity(0))}}))
"""


def _fake_python(tmp_path, sleep: float):
    path = tmp_path / "python"
    path.write_text(FAKE.format(sleep=sleep))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_copies_run_at_once(tmp_path):
    python = _fake_python(tmp_path, sleep=1.0)
    args = peer._train_args(layers=18, d_model=128, batch=8, seq=64, steps=10, warmup=2, threads=1)
    runs = peer._run_at_once(python, "torch_probe_bench.py", args, copies=2, timeout=60)
    assert len(runs) == 2 and len({r["pid"] for r in runs}) == 2
    # at once: each started before the other ended (one after the other could not)
    assert max(r["start"] for r in runs) < min(r["end"] for r in runs)
    argv = runs[0]["argv"]
    assert argv[0].endswith("torch_probe_bench.py")
    assert argv[argv.index("--threads") + 1] == "1" and argv[argv.index("--layers") + 1] == "18"


def test_step_times_reads_the_peer_medians(tmp_path):
    python = _fake_python(tmp_path, sleep=0.0)
    one = peer.train_steps(python, layers=6, d_model=128, batch=8, seq=64, steps=10, warmup=2)
    assert one == {
        "plain_ms": 10.0,
        "probed_ms": 12.5,
        "runq_wait_ms": 0.0,
        "torch": "2.9.0+cpu",
        "timed_window_unix_s": [1000.0, 1010.0],
    }
    both = peer.train_steps_at_once(python, copies=2, layers=6, d_model=128, batch=8, seq=64, steps=10, warmup=2)
    assert both == [one, one]


@pytest.mark.parametrize(
    "mode, message",
    [
        ("fail", "torch_probe_bench.py failed.*the peer broke"),
        ("garbled", "printed no JSON result.*no json here"),
        ("nosteps", "lacks its step times.*timing_off"),
    ],
)
def test_a_failing_copy_is_named(tmp_path, monkeypatch, mode, message):
    monkeypatch.setenv("FAKE_PEER", mode)
    python = _fake_python(tmp_path, sleep=0.0)
    with pytest.raises(peer.PeerUnavailable, match=message):
        peer.train_steps_at_once(python, copies=2, layers=6, d_model=128, batch=8, seq=64, steps=10, warmup=2)
    with pytest.raises(peer.PeerUnavailable, match=message):
        peer.train_steps(python, layers=6, d_model=128, batch=8, seq=64, steps=10, warmup=2)


def test_copies_past_the_deadline_are_killed(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("FAKE_PEER", "hang")
    python = _fake_python(tmp_path, sleep=0.0)
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(peer.subprocess, "Popen", lambda *a, **k: started.append(real_popen(*a, **k)) or started[-1])
    args = peer._train_args(layers=6, d_model=128, batch=8, seq=64, steps=10, warmup=2, threads=1)
    begin = time.perf_counter()
    with pytest.raises(subprocess.TimeoutExpired):
        peer._run_at_once(python, "torch_probe_bench.py", args, copies=2, timeout=1.0)
    assert time.perf_counter() - begin < 30  # killed at the deadline (each would sleep 60 s)
    assert len(started) == 2 and all(proc.poll() is not None for proc in started)


def test_the_copies_share_one_deadline(tmp_path, monkeypatch):
    # Stand-in processes: the first ends after 0.2 s, the second never does. The second wait may
    # only have what is left of the one deadline, and the copy still running is killed.
    import subprocess

    waits, procs = [], []

    class Proc:
        def __init__(self, index):
            self.index, self.returncode, self.killed = index, None, False

        def wait(self, timeout=None):
            if timeout is None:
                return self.returncode
            waits.append(timeout)
            if self.index == 0:
                time.sleep(0.2)
                self.returncode = 0
                return 0
            raise subprocess.TimeoutExpired("peer", timeout)

        def poll(self):
            return self.returncode

        def kill(self):
            self.killed, self.returncode = True, -9

    monkeypatch.setattr(peer.subprocess, "Popen", lambda *a, **k: procs.append(Proc(len(procs))) or procs[-1])
    with pytest.raises(subprocess.TimeoutExpired):
        peer._run_at_once(tmp_path / "python", "torch_probe_bench.py", [], copies=2, timeout=5.0)
    assert len(waits) == 2 and waits[0] <= 5.0 and waits[1] <= 5.0 - 0.2, waits
    assert not procs[0].killed and procs[1].killed


def test_sweep_row_takes_the_peers_better_way_to_run_two():
    from benchmarks.suite import sweep_row

    times = {"plain": [0.040, 0.050, 0.045], "probed": [0.050] * 3, "plain_one": [0.080] * 3, "probed_one": [0.090] * 3}
    # two one-thread processes at once: per model-step (mean of their medians) / 2 = 45 / 60 ms, median over rounds
    rounds = [
        [{"plain_ms": 90.0, "probed_ms": 110.0}, {"plain_ms": 90.0, "probed_ms": 130.0}],
        [{"plain_ms": 200.0, "probed_ms": 240.0}, {"plain_ms": 200.0, "probed_ms": 240.0}],
        [{"plain_ms": 80.0, "probed_ms": 100.0}, {"plain_ms": 100.0, "probed_ms": 140.0}],
    ]
    windows = [[0.0, 10.0], [1.0, 11.0]]  # 9 s of 10 in common
    for runs in rounds:
        for run, window in zip(runs, windows):
            run["timed_window_unix_s"] = window
    rounds[1][1]["timed_window_unix_s"] = [5.0, 15.0]  # half in common: the least overlap of the rounds
    row = sweep_row(times, rounds, {"torch_plain_ms": 70.0, "torch_probed_ms": 55.0})
    assert row["torch_at_once_overlap"] == pytest.approx(0.5)
    assert row["plain_ms"] == pytest.approx(45.0) and row["plain_streams_gain"] == pytest.approx(80 / 45)
    assert row["torch_plain_at_once_ms"] == pytest.approx(45.0) and row["torch_probed_at_once_ms"] == pytest.approx(
        60.0
    )
    # plain: two at once is the peer's better way (45 < 70); probed: one run on two threads (55 < 60)
    assert row["torch_plain_best_ms"] == pytest.approx(45.0) and row["torch_probed_best_ms"] == pytest.approx(55.0)
    assert row["sweep_speedup_plain"] == pytest.approx(1.0) and row["sweep_speedup_probed"] == pytest.approx(55 / 50)
    assert "sweep_speedup_plain" not in sweep_row(times, [], {"torch_plain_ms": 70.0})
    from benchmarks.suite import table

    printed = table(
        {"headline": {}, "reasons": {}, "sizes": {"d_model": 128}, "sweep_steps": {"streams": 2, "18": row}}
    )
    assert "sweep 18L" in printed and "torch best 45.0 / 55.0 ms" in printed and "50% at once" in printed


def test_headline_sweep_keys_take_the_smaller_depth():
    from benchmarks.suite import headline

    rows = {
        "streams": 2,
        "6": {"sweep_speedup_plain": 1.3, "sweep_speedup_probed": 1.1},
        "18": {"sweep_speedup_plain": 1.2, "sweep_speedup_probed": 1.4},
    }
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


def test_window_overlap():
    from benchmarks.suite import window_overlap

    assert window_overlap([[0.0, 10.0], [0.0, 10.0]]) == 1.0
    assert window_overlap([[0.0, 10.0], [10.0, 20.0]]) == 0.0 and window_overlap([[0.0, 4.0], [6.0, 10.0]]) == 0.0
    assert window_overlap([[0.0, 10.0], [2.0, 8.0]]) == pytest.approx(6.0 / 8.0)
    assert math.isnan(window_overlap([[0.0, 10.0], None]))


class _StandInPair:
    """Stands in for lnscope's plain and probed steps (benchmarks.steps.StepPair; its real steps are
    test_benchmarks_smoke.py's): each call takes a fixed time, nothing is compiled."""

    def __init__(self, *args) -> None:
        self.seconds = {"plain": 0.003, "probed": 0.004}

    def compile(self) -> None:
        pass

    def twin(self) -> _StandInPair:
        return _StandInPair()

    def time(self, name: str) -> float:
        return self.seconds[name]


def test_a_peer_failing_in_the_sweep_keeps_lnscopes_numbers(tmp_path, monkeypatch):
    import benchmarks.suite as suite

    monkeypatch.setenv("FAKE_PEER", "fail")
    monkeypatch.setattr(suite, "StepPair", _StandInPair)
    python = _fake_python(tmp_path, sleep=0.0)
    out = suite.bench_sweep_steps(suite.SMOKE, python, {"2": {"torch_plain_ms": 1.0, "torch_probed_ms": 1.0}})
    assert "the peer broke" in out["peer_reason"]
    row = out[str(suite.SMOKE.depths[0])]
    assert row["plain_ms"] > 0 and row["probed_ms"] > 0 and "sweep_speedup_plain" not in row
    assert (row["plain_one_ms"], row["probed_one_ms"]) == (3.0, 4.0)  # the one-stream times: lnscope's own


def test_the_sweeps_own_peer_failure_is_the_reason_before_the_peers_absence():
    from benchmarks.suite import missing_reasons

    reasons = {"sweep_steps_peer": "PeerUnavailable: broke", "steps": "RuntimeError: other"}
    missing_reasons({"sweep_speedup_plain_d128": None}, reasons)
    assert reasons["sweep_speedup_plain_d128"] == "PeerUnavailable: broke"


def test_a_pinned_peer_runs_on_the_given_cpu_only(tmp_path):
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: a pinned and an unpinned run cannot be told apart")
    python = _fake_python(tmp_path, sleep=0.0)
    cpu = max(os.sched_getaffinity(0))
    args = peer._train_args(layers=6, d_model=128, batch=8, seq=64, steps=10, warmup=2, threads=1)
    assert peer._run(python, "torch_probe_bench.py", args, timeout=60, cpus={cpu})["cpus"] == [cpu]
    assert peer._run(python, "torch_probe_bench.py", args, timeout=60)["cpus"] == sorted(os.sched_getaffinity(0))


def test_core_row_compares_one_core_with_every_core():
    from benchmarks.suite import core_row

    one_core = [
        {"plain_ms": 150.0, "probed_ms": 170.0, "cpus": [0]},
        {"plain_ms": 140.0, "probed_ms": 160.0, "cpus": [0]},
        {"plain_ms": 145.0, "probed_ms": 180.0, "cpus": [0]},
    ]
    peer_rounds = [
        {"plain_ms": 160.0, "probed_ms": 190.0},
        {"plain_ms": 155.0, "probed_ms": 185.0},
        {"plain_ms": 165.0, "probed_ms": 200.0},
    ]
    step_row = {"plain_ms": 100.0, "probed_ms": 110.0, "torch_plain_ms": 104.0, "torch_probed_ms": 120.0}
    row = core_row(one_core, peer_rounds, step_row)
    assert row["plain_one_core_ms"] == 145.0 and row["probed_one_core_ms"] == 170.0  # medians
    assert row["plain_core_gain"] == pytest.approx(1.45) and row["probed_core_gain"] == pytest.approx(170 / 110)
    assert row["torch_plain_one_core_ms"] == 160.0 and row["torch_plain_core_gain"] == pytest.approx(160 / 104)
    assert row["torch_speedup_plain_one_core"] == pytest.approx(160 / 145)
    assert row["torch_speedup_probed_one_core"] == pytest.approx(190 / 170)
    # without the peer or the every-core row: lnscope's one-core times alone
    assert row["rounds"] == one_core and row["torch_rounds"] == peer_rounds  # every round kept
    alone = core_row(one_core, [], {})
    assert set(alone) == {"cpus", "rounds", "plain_one_core_ms", "probed_one_core_ms"}


# Stands in for lnscope's one-core process (its real steps are test_benchmarks_smoke.py's): it prints
# that process's JSON line, with the CPUs it was restricted to.
ONE_CORE_STAND_IN = """
import json, os
print(json.dumps({"plain_ms": 3.0, "probed_ms": 4.0, "first_call_s": {"plain": 1.0, "probed": 1.5},
                  "cpus": sorted(os.sched_getaffinity(0))}))
"""


def test_a_peer_failing_in_the_one_core_diagnostic_keeps_lnscopes_numbers(tmp_path, monkeypatch):
    import benchmarks.suite as suite

    monkeypatch.setenv("FAKE_PEER", "fail")
    monkeypatch.setattr(suite, "_one_core_code", lambda layers, sizes, cache_dir: ONE_CORE_STAND_IN)
    python = _fake_python(tmp_path, sleep=0.0)
    calls = []
    real = peer.train_steps
    monkeypatch.setattr(peer, "train_steps", lambda *args, **kw: calls.append(kw) or real(*args, **kw))
    out = suite.bench_core_scaling(suite.SMOKE, python, {"2": {"plain_ms": 1.0, "probed_ms": 1.0}})
    assert "the peer broke" in out["peer_reason"]
    assert calls and calls[0]["cpus"] == {out["cpu"]} and calls[0]["threads"] == 1  # the peer pinned there too
    row = out[str(suite.SMOKE.depths[0])]
    assert row["cpus"] == [out["cpu"]] and "torch_plain_one_core_ms" not in row  # lnscope's process pinned
    assert (row["plain_one_core_ms"], row["probed_one_core_ms"], row["plain_core_gain"]) == (3.0, 4.0, 3.0)


def test_the_one_core_diagnostic_needs_a_second_core(monkeypatch):
    import benchmarks.suite as suite

    monkeypatch.setattr(suite.os, "sched_getaffinity", lambda pid: {3})
    with pytest.raises(RuntimeError, match=r"only CPU \[3\] is available"):
        suite.bench_core_scaling(suite.SMOKE, None, None)


def test_a_fresh_process_past_its_timeout_is_killed(tmp_path):
    import os

    from benchmarks.suite import _children

    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with pytest.raises(RuntimeError, match="ran past 2 s and was killed"):
        _children([code], timeout=2, parallel=False)
    assert not os.path.exists(f"/proc/{int(pid_file.read_text())}")  # killed and reaped


def test_a_fresh_process_without_a_json_result_is_named():
    from benchmarks.suite import _children

    with pytest.raises(RuntimeError, match="printed no JSON result.*'hello'"):
        _children(["print('hello')"], timeout=60, parallel=False)


def test_fresh_processes_at_once_are_all_ended_when_one_fails(tmp_path):
    import os

    from benchmarks.suite import _children

    pid_file = tmp_path / "pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    failing = "import time; time.sleep(3); raise SystemExit('broke')"
    with pytest.raises(RuntimeError, match="broke"):
        _children([failing, sleeper], timeout=60, parallel=True)
    assert not os.path.exists(f"/proc/{int(pid_file.read_text())}")  # the other one killed and reaped
