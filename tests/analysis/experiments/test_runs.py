"""The job pool (analysis.experiments.runs.compute_jobs): worker processes give the in-process numbers
bit for bit, store every job once, and report a failing job without losing the others, and stop at once when asked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from analysis.experiments.experiment import HARNESSES
from analysis.experiments.runs import _compute, _stop, clear_memory, compute_jobs, job_key, run_jobs

TINY = HARNESSES["tiny"]
PROBES = ("act_grad_norm", "param_grad_norm", "act_norm")


def _jobs():
    good = [TINY.init_job(p, PROBES, "decoder", p, 2) for p in ("pre", "post")]
    # a sequence longer than the model's positions: probe_at_init refuses it inside the worker
    bad = dataclasses.replace(good[0], variant="too long", model=dataclasses.replace(good[0].model, max_len=8))
    return good, bad


def test_pool_equals_in_process_and_reports_failures(tmp_path: Path) -> None:
    good, bad = _jobs()
    clear_memory()
    failed = compute_jobs([*good, bad, good[0]], tmp_path, workers=2)  # a repeated job is computed once
    assert list(failed) == [job_key(bad)] and "max_len" in failed[job_key(bad)]
    stored = sorted(p.name for p in (tmp_path / "jobs" / "init").iterdir())
    assert stored == sorted(f"{job_key(j)}.{s}" for j in good for s in ("json", "parquet"))
    pooled = run_jobs(good, tmp_path)
    clear_memory()
    for job in good:  # the same job computed here, without a store
        here = _compute(job, None).drop(columns=["run"])
        there = pooled[pooled["job"] == job_key(job)].drop(columns=["run", "variant", "job"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(there, here, check_exact=True)
    with pytest.raises(ValueError, match="max_len"):  # run_jobs computes the failed job again: its error surfaces
        run_jobs([bad], tmp_path)


def test_nothing_to_compute_starts_no_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good, _ = _jobs()
    clear_memory()
    compute_jobs(good, tmp_path, workers=1)
    clear_memory()
    monkeypatch.setattr("analysis.experiments.runs.ProcessPoolExecutor", lambda *a, **k: pytest.fail("pool started"))
    assert compute_jobs(good, tmp_path, workers=2) == {}


def test_stop_cancels_queued_jobs_and_ends_the_workers() -> None:
    """What Ctrl-C does to a pool: a plain shutdown would run every queued job first."""
    import multiprocessing
    import time
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(time.sleep, 30) for _ in range(5)]
    while not futures[0].running():
        time.sleep(0.05)
    processes = list(pool._processes.values())
    start = time.perf_counter()
    _stop(pool)
    # Poll rather than join once: the pool's own manager thread reaps its workers too, and a join that
    # loses that race (waitpid: no child) returns at once with the process still reading as alive
    # until the other thread records its exit code (seen once in CI, after 0.007 s).
    while any(p.is_alive() for p in processes) and time.perf_counter() - start < 10:
        time.sleep(0.05)
    assert not any(p.is_alive() for p in processes), "the workers outlived _stop by 10 s"
    # no queued job ran to a result: each is cancelled, failed with the ended pool, or left pending
    # with no worker to run it (which of these depends on the pool's manager thread)
    time.sleep(1)
    assert not any(f.done() and not f.cancelled() and f.exception() is None for f in futures)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_a_worker_runs_on_its_share_of_the_cpus() -> None:
    """compute_jobs' initializer restricts each worker to the share it takes, before JAX starts its
    CPU client, and gives it as many seed streams as the share has CPUs."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from analysis.experiments.runs import _start_worker
    from analysis.runtime import STREAMS_VAR

    context = multiprocessing.get_context("spawn")
    shares = context.Queue()
    cpu = max(os.sched_getaffinity(0))
    shares.put([cpu])
    environ = dict(os.environ)
    os.environ.pop(STREAMS_VAR, None)  # the worker's streams come from its share (spawned: it copies this environment)
    try:
        with ProcessPoolExecutor(
            1, mp_context=context, initializer=_start_worker, initargs=("code", {}, 5, shares)
        ) as pool:
            assert pool.submit(os.sched_getaffinity, 0).result(timeout=120) == {cpu}
            assert pool.submit(os.getenv, STREAMS_VAR).result(timeout=120) == "1"
    finally:
        os.environ.clear()
        os.environ.update(environ)


def test_the_pool_hands_each_worker_a_share(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compute_jobs gives its workers worker_cpus' shares, one per worker, through the initializer."""
    good, _ = _jobs()
    clear_memory()
    monkeypatch.setattr("analysis.experiments.runs.worker_cpus", lambda workers: [[0], [1]][:workers])
    seen = {}

    class Stop(Exception):
        pass

    def fake_pool(workers, **kwargs):
        seen.update(kwargs, workers=workers)
        raise Stop

    monkeypatch.setattr("analysis.experiments.runs.ProcessPoolExecutor", fake_pool)
    with pytest.raises(Stop):
        compute_jobs(good, tmp_path, workers=2)
    shares = seen["initargs"][3]
    assert seen["workers"] == 2 and sorted([shares.get(timeout=10), shares.get(timeout=10)]) == [[0], [1]]
    monkeypatch.setattr("analysis.experiments.runs.worker_cpus", lambda workers: None)
    with pytest.raises(Stop):
        compute_jobs(good, tmp_path, workers=2)
    assert seen["initargs"][3] is None  # no restriction: no queue
