"""Several writers on one store (analysis.train.store.claim_run): a claim is exclusive, a live one is
waited for or refused, a dead one (its pid gone on this host, or its heartbeat stale) is taken over;
three concurrent sweeps on one store, one SIGKILLed midway and rerun, compute every run once, bit-equal
to a serial sweep, leaving no duplicate, partial or claim file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from analysis.train import load_runs, store
from analysis.train.store import CLAIM, RunClaimed, claim_run
from analysis.train.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[3]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_claim(folder: Path, pid: int, host: str, age: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM
    path.write_text(json.dumps({"pid": pid, "host": host, "token": "other", "since": time.time()}))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_claim_is_exclusive_and_released(tmp_path):
    folder = tmp_path / "run"
    with claim_run(folder) as claim:
        assert claim is not None and claim.held()
        owner = json.loads((folder / CLAIM).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(RunClaimed, match=f"pid {os.getpid()}"):
            with claim_run(folder, wait=False):
                pass
    assert not (folder / CLAIM).exists()


def test_claim_released_on_error(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with claim_run(tmp_path / "run"):
            raise ZeroDivisionError
    assert not (tmp_path / "run" / CLAIM).exists()


def test_live_claim_of_another_host_is_refused(tmp_path):
    _write_claim(tmp_path / "run", pid=1, host="elsewhere")
    with pytest.raises(RunClaimed, match="elsewhere"):
        with claim_run(tmp_path / "run", wait=False):
            pass


@pytest.mark.parametrize("owner", ["dead_pid_here", "stale_heartbeat_elsewhere"])
def test_dead_claim_is_taken_over(tmp_path, owner):
    folder = tmp_path / "run"
    if owner == "dead_pid_here":
        _write_claim(folder, pid=_dead_pid(), host=socket.gethostname())
    else:
        _write_claim(folder, pid=1, host="elsewhere", age=store.CLAIM_STALE_S + 5)
    with claim_run(folder, wait=False) as claim:
        assert claim is not None and claim.held()
    assert not (folder / CLAIM).exists() and not list(folder.glob(".*dead"))


def test_waiter_reads_back_what_the_owner_finished(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CLAIM_POLL_S", 0.05)
    folder = tmp_path / "run"
    got = []
    with claim_run(folder) as claim:
        assert claim is not None
        waiter = threading.Thread(target=lambda: got.append(claim_run(folder).__enter__()))
        waiter.start()
        time.sleep(0.3)
        assert waiter.is_alive() and not got, "a live claim is waited for"
        frame = store.empty_curves()
        store.write_finished(folder, frame, store.empty_probes(), {"run_id": "x", "config": {}, "status": {}})
    waiter.join(10)
    assert got == [None], "the finished run is read back, not computed again"


def test_heartbeat_keeps_a_long_claim_alive(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "CLAIM_HEARTBEAT_S", 0.05)
    with claim_run(tmp_path / "run") as claim:
        path = tmp_path / "run" / CLAIM
        os.utime(path, (0, 0))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5
        assert claim.held()


BASE = {
    "steps": 40,
    "seeds": 2,
    "probe_every": 0,
    "eval_every": 20,
    "eval_batches": 2,
    "checkpoint_every": 10,
    "model": {"arch": "decoder", "layers": 2, "d_model": 16, "heads": 2, "d_ff": 32, "vocab": 32, "max_len": 32},
    "task": {"name": "markov", "seq_len": 16, "batch_size": 4},
}
SWEEP = {"base": BASE, "grid": {"optim.lr": [1e-3, 2e-3, 3e-3, 4e-3]}}
WORKER = """
import json, sys
from analysis.train.sweep import run_sweep
table = run_sweep(sys.argv[1], sys.argv[2], progress=False)
table.to_json(sys.argv[3])
"""


def _owner_pid(path: Path) -> int | None:
    try:
        return json.loads(path.read_text()).get("pid")
    except (OSError, ValueError):  # released or being written this instant
        return None


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_COMPILATION_CACHE_DIR": str(ROOT / ".jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1",
        "JAX_NUMPY_DTYPE_PROMOTION": "strict",
        "LNSCOPE_STREAMS": "1",
    }


@pytest.mark.slow
def test_three_concurrent_sweeps_one_killed_compute_every_run_once(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(SWEEP))
    out = tmp_path / "runs"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), str(out), str(tmp_path / f"table{i}.json")],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 600
    try:  # SIGKILL the first sweep once a run it owns has a complete checkpoint
        while True:
            owned = [c.parent for c in out.glob(f"*/{CLAIM}") if _owner_pid(c) == procs[0].pid]
            killed = [f for f in owned if [p for p in (f / "checkpoints").glob("[0-9]*") if p.name.isdigit()]]
            if killed:
                break
            assert procs[0].poll() is None, procs[0].stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first sweep wrote no checkpoint in time"
            time.sleep(0.05)
    finally:
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
    for proc in procs[1:]:
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]
    rerun = run_sweep(path, out, progress=False)  # the killed sweep run again
    tables = [pd.read_json(tmp_path / f"table{i}.json") for i in (1, 2)] + [rerun]
    computed = pd.concat([t.loc[~t["skipped"], "run_id"] for t in tables])
    assert computed.is_unique, f"a run was computed twice: {computed.tolist()}"
    assert rerun["skipped"].all(), "the survivors finished every run, the killed one's included"
    assert sorted(p.name for p in out.iterdir()) == sorted(rerun["run_id"]), "one folder per run"
    leftovers = [p for p in out.rglob("*") if "tmp" in p.name or p.name in (CLAIM, "partial", "started.json")]
    assert not leftovers, f"partial or claim files left: {leftovers}"
    resumed = json.loads((killed[0] / "run.json").read_text())["info"]["resumed_from"]
    assert resumed, "the killed sweep's run was taken over and resumed from its checkpoint"
    serial = run_sweep(path, tmp_path / "serial", progress=False)
    assert list(serial["run_id"]) == list(rerun["run_id"])
    pd.testing.assert_frame_equal(load_runs(out), load_runs(tmp_path / "serial"), check_exact=True)
