"""Several hosts, run for real: two processes on this machine joined by analysis.train.distributed
(jax.distributed, gloo collectives on the CPU), each with its own CPU device, train one run with its
seeds sharded across them, as a user's script on two hosts does.

- the run finds the single-process run's numbers (to float rounding: one seed per device is another
  program than a seed alone), and only process 0 writes the store;
- a process killed midway ends the other with a clear error within seconds (no hang), and nothing in
  the store is half-written.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.train import checkpoint, read_result, store, train
from tests.analysis.train.configs import tiny_run

pytestmark = pytest.mark.slow  # two fresh JAX processes compile the run's programs

ROOT = Path(__file__).resolve().parents[3]
# one seed per device against a seed alone: float32 reordering that the updates amplify (as
# tests/analysis/train/test_train_store.py::MODES_RTOL)
SHARDED_RTOL, SHARDED_ATOL = 1e-4, 1e-6
HEARTBEAT_S = 5  # the survivor's distributed service gives up on a silent process after this
RUN_TIMEOUT_S = 300  # a whole two-process run, compile included, on a loaded 2-core machine
SURVIVOR_ENDS_WITHIN_S = 60  # after the kill: far less than a hang, far more than the heartbeat

# The user's script: join, train, and report which store writers this process called.
WORKER = """
import json, sys
from analysis.train import distributed
process, port, out, cache, changes = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
distributed.join(f"127.0.0.1:{port}", 2, process, heartbeat_timeout_s=int(sys.argv[6]), shutdown_timeout_s=5)
import jax
jax.config.update("jax_compilation_cache_dir", cache)  # the kill test's processes reuse the first's programs
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
from analysis.train import store, train
from tests.analysis.train.configs import tiny_run
writes = []
for name in ("write_started", "write_partial", "write_finished", "remove_leftovers"):
    def recorded(*args, _name=name, _real=getattr(store, name), **kwargs):
        writes.append(_name)
        return _real(*args, **kwargs)
    setattr(store, name, recorded)
result = train(tiny_run(**json.loads(changes)), out)
print("RESULT " + json.dumps({"process": process, "devices": len(jax.devices()), "writes": writes,
                              "run_id": result.run_id}), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(out: Path, cache: Path, changes: dict) -> list[subprocess.Popen]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # one CPU device per process, whatever the suite simulates in its own process
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "force_host_platform_device_count" not in f)
    argv = lambda i: [sys.executable, "-c", WORKER, str(i), str(port), str(out), str(cache), json.dumps(changes)]
    return [
        subprocess.Popen(
            [*argv(i), str(HEARTBEAT_S)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("compilation_cache")


def test_two_processes_train_one_run_with_the_single_process_numbers(tmp_path, cache):
    procs = _start(tmp_path, cache, {})
    outputs = [p.communicate(timeout=RUN_TIMEOUT_S) for p in procs]
    for p, (_, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
    lines = [line for stdout, _ in outputs for line in stdout.splitlines()]
    reports = [json.loads(line.removeprefix("RESULT ")) for line in lines if line.startswith("RESULT ")]
    assert [r["process"] for r in reports] == [0, 1] and {r["devices"] for r in reports} == {2}
    assert reports[0]["run_id"] == reports[1]["run_id"]
    assert "write_finished" in reports[0]["writes"] and reports[1]["writes"] == []  # only process 0 writes

    stored = read_result(tmp_path / reports[0]["run_id"])
    assert stored.info["devices"] == 2 and stored.info["seed_programs"] == "vmapped"
    alone = train(tiny_run())  # one process, the CPU default: a program per seed
    assert stored.run_id == alone.run_id and stored.status == alone.status
    for kind in ("curves", "probes"):
        a, b = getattr(stored, kind), getattr(alone, kind)
        assert len(a) > 0
        pd.testing.assert_frame_equal(a.drop(columns="value"), b.drop(columns="value"))
        np.testing.assert_allclose(a["value"], b["value"], rtol=SHARDED_RTOL, atol=SHARDED_ATOL)


def test_a_killed_process_ends_the_run_with_a_clear_error_and_nothing_half_written(tmp_path, cache):
    # long enough to be killed between its first checkpoint and its end; the same programs as above
    changes = dict(steps=4000, checkpoint_every=10, probe_every=2000, eval_every=2000)
    procs = _start(tmp_path, cache, changes)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        # a complete checkpoint, as orbax counts them (a step's folder may exist before it is whole)
        while not [f for f in tmp_path.iterdir() if f.is_dir() and checkpoint.steps(f)]:
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = procs[0].communicate(timeout=SURVIVOR_ENDS_WITHIN_S)
        ended_after = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert procs[0].returncode != 0 and ended_after < SURVIVOR_ENDS_WITHIN_S, (ended_after, stderr[-3000:])
    # the loop's gather or checkpoint save names the lost process (distributed.peer_loss_named); had
    # JAX's heartbeat found it first, its service says so
    assert "PeerLost" in stderr or "another task died" in stderr, stderr[-3000:]

    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert not store.is_finished(folder) and not (folder / "curves.parquet").exists()
    # what a kill interrupted orbax does not count as a checkpoint (and removes on resume); every
    # checkpoint it counts, and every other file, is whole
    saved = checkpoint.steps(folder)
    assert saved and all((folder / "checkpoints" / str(s) / "_CHECKPOINT_METADATA").is_file() for s in saved)
    partial_step = json.loads((folder / "partial" / "partial.json").read_text())["step"]
    curves, probes = store.read_partial(folder, before=changes["steps"])
    assert set(curves["step"]) == set(range(partial_step)) and set(probes["step"]) == {0}
