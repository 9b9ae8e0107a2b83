"""The computations experiments ask for, as jobs that run once and are shared.

A job is a frozen description of one computation (probe a configuration at init over seeds, train
one, or an experiment's own jitted measurement) with `spec()` (everything that determines its
numbers, JSON-able) and `compute()` (its tidy frame). `run_jobs` keys each job by a hash of its spec
and computes it only if neither the process-wide memory nor the store holds it, so experiments that
ask for the same model at the same sizes (Takase's and Xie's 18-layer decoders, Xiong's and
Admin's depth sweeps) share one computation. The variant label and extra columns a job carries are
not part of its hash: they are attached to the shared rows on the way out.

The hash covers the configuration and the source of the rooms every job computes through (models/,
analysis/probe/, analysis/train/: `analysis.identity.code_fingerprint`), so a changed model or probe never
serves stale numbers from a store. A job class whose own computation lives in its experiment module
(Xu's backward measurement, the training runs' rows) carries a `version` in its spec, bumped when
that computation changes.

`compute_jobs` computes the missing ones of many jobs at once on a pool of worker processes (with
`lnscope`, one per core on a CPU: a study is compile-bound, and XLA compiles a program on one core),
so a report or `lnscope check` hands it every job of every experiment first and the experiments then
read them back.

Store layout (optional; `store=None` keeps results in memory only):
    <store>/jobs/<kind>/<hash>.parquet   the job's tidy rows (analysis.io.write_run, atomic)
    <store>/jobs/<kind>/<hash>.json      its spec, the environment (versions, devices, commit), seconds
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jax
import pandas as pd
from tqdm import tqdm

from analysis.identity import code_fingerprint, content_id
from analysis.io import environment, read_run, write_run
from analysis.probe.api import probe_at_init
from analysis.probe.probes import ProbeConfig
from analysis.runtime import (
    STREAMS_VAR,
    available_cores,
    default_workers,
    end_with_parent,
    pin_workers,
    release_compiled_if_crowded,
    worker_cpus,
)
from models import ModelConfig

_MEMORY: dict[str, pd.DataFrame] = {}


class Job(Protocol):
    """What `run_jobs` needs from a job."""

    variant: str  # the label its rows carry (a placement and the form of the method)
    columns: tuple[tuple[str, Any], ...]  # extra (column, value) pairs for its rows (x axes, groups)

    @property
    def kind(self) -> str: ...
    def spec(self) -> dict[str, Any]: ...
    def compute(self) -> pd.DataFrame: ...


code_fingerprint()  # read when this module is imported: the code this process runs


def job_key(job: Job) -> str:
    """Hash of everything that determines a job's numbers (not its label): its spec and the source of
    the code that computes it (`code_fingerprint`: models/, analysis/probe/, analysis/train/)."""
    return content_id({"spec": job.spec(), "code": code_fingerprint()})


@dataclass(frozen=True)
class InitJob:
    """Probe freshly initialized models of one configuration over seeds 0..seeds-1 (probe_at_init).

    Attributes:
        variant: label of the rows (e.g. "b2t (code rescale)").
        model: the configuration.
        seeds, batch_size, seq_len: seeds of one probe_at_init study; random-token batch per seed.
        probes: probe names (analysis.probe.PROBES).
        output_change_lr: step size of the output-change probe (a sign step, Admin's amplification).
        columns: extra (column, value) pairs for the rows, e.g. (("skip_lambda", 1.5),).
    """

    variant: str
    model: ModelConfig
    seeds: int
    batch_size: int
    seq_len: int
    probes: tuple[str, ...]
    output_change_lr: float = 1e-4
    columns: tuple[tuple[str, Any], ...] = ()

    kind = "init"

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": dataclasses.asdict(self.model),
            "seeds": self.seeds,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "probes": sorted(self.probes),
            "output_change_lr": self.output_change_lr,
        }

    def compute(self) -> pd.DataFrame:
        pcfg = ProbeConfig(probes=tuple(self.probes), output_change_lr=self.output_change_lr)
        return probe_at_init(
            self.model, seeds=range(self.seeds), batch_size=self.batch_size, seq_len=self.seq_len, probe_config=pcfg
        )


def clear_memory() -> None:
    """Forget the in-process results (the store on disk is untouched)."""
    _MEMORY.clear()


def _stored(store: Path | None, job: Job, key: str) -> Path | None:
    return None if store is None else Path(store) / "jobs" / job.kind / f"{key}.parquet"


def _is_stored(path: Path | None) -> bool:
    return path is not None and path.exists() and path.with_suffix(".json").exists()


def _compute(job: Job, path: Path | None) -> pd.DataFrame:
    """One job's rows, written to `path` (frame and meta, atomically) when given."""
    start = time.perf_counter()
    frame = job.compute()
    release_compiled_if_crowded()  # many compiled programs exhaust the process' mappings
    if path is not None:
        meta = {"spec": job.spec(), "environment": environment(), "seconds": round(time.perf_counter() - start, 2)}
        write_run(frame, meta, path)
    return frame


def _cost(job: Job) -> float:
    """A rough relative cost, to start the longest jobs first (a pool then finishes together)."""
    try:
        spec = job.spec()
        model = spec.get("model") or spec.get("config", {}).get("model") or {}
        depth = (model.get("layers") or 1) * (2 if model.get("arch") == "encdec" else 1)
        return float(depth) * (10.0 if job.kind == "train" else 1.0)
    except Exception:  # noqa: BLE001 - a job of another shape: no estimate, started last
        return 0.0


# JAX settings a worker takes from the process that started it (a spawned process starts from the
# environment alone, and these may have been set in code: x64, strict promotion, the cache).
WORKER_JAX_SETTINGS = (
    "jax_enable_x64",
    "jax_numpy_dtype_promotion",
    "jax_default_matmul_precision",
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
)
_PARENT_CODE: str | None = None  # in a worker: the code fingerprint of the process that started it


def _start_worker(code: str, settings: dict[str, Any], streams: int, shares: Any = None) -> None:
    end_with_parent()  # no worker outlives its parent, however that one ends (analysis.runtime)
    # First, before JAX starts its CPU client: a worker restricted to its share of the CPUs gets an
    # XLA thread pool of that size (analysis.runtime.worker_cpus says why).
    if shares is not None:
        cpus = shares.get(timeout=60)
        os.sched_setaffinity(0, cpus)
        streams = len(cpus)
    global _PARENT_CODE
    _PARENT_CODE = code
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # accelerator memory shared by workers
    os.environ.setdefault(STREAMS_VAR, str(streams))  # the worker's share of the cores, unless the user chose
    for name, value in settings.items():
        jax.config.update(name, value)


def _compute_in_worker(job: Job, path: Path | None) -> pd.DataFrame:
    if code_fingerprint() != _PARENT_CODE:
        raise RuntimeError("lnscope's source changed since this run started; the job is computed in the main process")
    return _compute(job, path)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what is queued and end the workers now (a pool's own shutdown runs every queued job)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def compute_jobs(
    jobs: Sequence[Job],
    store: Path | None = None,
    *,
    workers: int | None = None,
    progress: bool = False,
    desc: str = "computing",
) -> dict[str, str]:
    """Compute every job that neither this process nor the store holds yet, on `workers` processes
    (default `analysis.runtime.default_workers()`: $LNSCOPE_WORKERS, 1 unless set; the `lnscope`
    command sets "auto", one per core on a CPU), keeping the rows in memory (and in the store) for
    `run_jobs`.

    Longest jobs start first. A job that fails here is only reported (returned as {key: error}, and
    printed): `run_jobs` computes it again where it is asked for, so the error surfaces in the
    experiment that needs it. Worker processes are spawned (never forked from a process running
    XLA's threads), each restricted on a CPU to its own share of the cores (analysis.runtime.worker_cpus;
    $LNSCOPE_PIN_WORKERS=off lifts it), take this process' JAX settings (WORKER_JAX_SETTINGS, the
    compilation cache included) and refuse to compute if lnscope's source changed since this process started. Ctrl-C
    cancels the queued jobs and ends the workers. With more than one worker, a script that calls
    this (e.g. through `run_checks`) needs the `if __name__ == "__main__":` guard of any
    multiprocessing program; notebooks do not.
    """
    pin_workers()  # a bad $LNSCOPE_PIN_WORKERS is named even when no pool is needed
    missing: dict[str, Job] = {}
    for job in jobs:
        key = job_key(job)
        if key not in _MEMORY and key not in missing and not _is_stored(_stored(store, job, key)):
            missing[key] = job
    order = sorted(missing, key=lambda k: -_cost(missing[k]))
    workers = 0 if not order else min(default_workers() if workers is None else workers, len(order))
    failed: dict[str, str] = {}
    bar = tqdm(
        total=len(order),
        desc=f"{desc} ({max(workers, 1)} processes)",
        unit="job",
        disable=not progress or not order,
        file=sys.stderr,
    )
    if workers <= 1:
        for key in order:
            try:
                _MEMORY[key] = _compute(missing[key], _stored(store, missing[key], key))
            except Exception as err:  # noqa: BLE001 - surfaces again in run_jobs
                failed[key] = f"{type(err).__name__}: {err}"
            bar.update()
    else:
        settings = {name: getattr(jax.config, name) for name in WORKER_JAX_SETTINGS}
        context = multiprocessing.get_context("spawn")
        shares = None
        if (cpu_shares := worker_cpus(workers)) is not None:
            shares = context.Queue()  # each worker takes one share as it starts
            for share in cpu_shares:
                shares.put(share)
        pool = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(code_fingerprint(), settings, max(1, available_cores() // workers), shares),
        )
        try:
            futures = {
                pool.submit(_compute_in_worker, missing[key], _stored(store, missing[key], key)): key for key in order
            }
            for future in as_completed(futures):
                key = futures[future]
                try:
                    _MEMORY[key] = future.result()
                except Exception as err:  # noqa: BLE001 - a crashed worker too; surfaces again in run_jobs
                    failed[key] = f"{type(err).__name__}: {err}"
                bar.update()
        except BaseException:  # Ctrl-C or an error here: no queued job may run on
            _stop(pool)
            raise
        pool.shutdown()
    bar.close()
    for key, error in failed.items():
        print(
            f"job {missing[key].kind}/{key} ({missing[key].variant}) failed: {error}; it is retried where needed",
            file=sys.stderr,
        )
    return failed


def run_jobs(
    jobs: Sequence[Job], store: Path | None = None, *, progress: bool = False, desc: str = "jobs"
) -> pd.DataFrame:
    """Every job's rows, computed at most once per process (and once per store), with `variant`,
    `job` (its hash) and its extra columns attached."""
    frames = []
    for job in tqdm(jobs, desc=desc, unit="job", disable=not progress, leave=False):
        key = job_key(job)
        if key not in _MEMORY:
            path = _stored(store, job, key)
            _MEMORY[key] = read_run(path)[0] if _is_stored(path) else _compute(job, path)
        frame = _MEMORY[key].copy()
        frame["run"] = f"{job.kind}/{key}"
        frame["variant"], frame["job"] = job.variant, key
        for column, value in job.columns:
            frame[column] = value
        frames.append(frame)
    if not frames:
        raise ValueError("run_jobs: no jobs given")
    return pd.concat(frames, ignore_index=True)
