"""The computations experiments ask for, as jobs that run once and are shared.

A job is a frozen description of one computation (probe a configuration at init over seeds, train
one, or an experiment's own jitted measurement) with `spec()` (everything that determines its
numbers, JSON-able) and `compute()` (its tidy frame). `run_jobs` keys each job by a hash of its spec
and computes it only if neither the process-wide memory nor the store holds it, so experiments that
ask for the same model at the same sizes (Takase's and Xie's 18-layer decoders, Xiong's and
Admin's depth sweeps) share one computation. The variant label and extra columns a job carries are
not part of its hash: they are attached to the shared rows on the way out.

The hash covers the configuration, not the code: after changing how a job computes (a probe, the
model), use a fresh store folder (or delete the affected files). A job class whose own computation
changes carries a `version` in its spec for that reason.

Store layout (optional; `store=None` keeps results in memory only):
    <store>/jobs/<kind>/<hash>.parquet   the job's tidy rows (analysis.io.write_run, atomic)
    <store>/jobs/<kind>/<hash>.json      its spec, the environment (versions, devices, commit), seconds
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import pandas as pd
from tqdm import tqdm

from analysis.io import environment, read_run, write_run
from analysis.probe.api import probe_at_init
from analysis.probe.probes import ProbeConfig
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


def job_key(job: Job) -> str:
    """Hash of everything that determines a job's numbers (not its label)."""
    text = json.dumps(job.spec(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class InitJob:
    """Probe freshly initialized models of one configuration over seeds 0..seeds-1 (probe_at_init).

    Attributes:
        variant: label of the rows (e.g. "b2t (code rescale)").
        model: the configuration.
        seeds, batch_size, seq_len: seeds vmapped in one call; random-token batch per seed.
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
        return {"kind": self.kind, "model": dataclasses.asdict(self.model), "seeds": self.seeds,
                "batch_size": self.batch_size, "seq_len": self.seq_len, "probes": sorted(self.probes),
                "output_change_lr": self.output_change_lr}  # fmt: skip

    def compute(self) -> pd.DataFrame:
        pcfg = ProbeConfig(probes=tuple(self.probes), output_change_lr=self.output_change_lr)
        return probe_at_init(self.model, seeds=range(self.seeds), batch_size=self.batch_size, seq_len=self.seq_len,
                             probe_config=pcfg)  # fmt: skip


def clear_memory() -> None:
    """Forget the in-process results (the store on disk is untouched)."""
    _MEMORY.clear()


def _stored(store: Path | None, job: Job, key: str) -> Path | None:
    return None if store is None else Path(store) / "jobs" / job.kind / f"{key}.parquet"


def run_jobs(jobs: Sequence[Job], store: Path | None = None, *, progress: bool = False, desc: str = "jobs") -> pd.DataFrame:
    """Every job's rows, computed at most once per process (and once per store), with `variant`,
    `job` (its hash) and its extra columns attached."""
    frames = []
    for job in tqdm(jobs, desc=desc, unit="job", disable=not progress, leave=False):
        key = job_key(job)
        if key not in _MEMORY:
            path = _stored(store, job, key)
            if path is not None and path.exists() and path.with_suffix(".json").exists():
                _MEMORY[key] = read_run(path)[0]
            else:
                start = time.perf_counter()
                frame = job.compute()
                if path is not None:
                    meta = {"spec": job.spec(), "environment": environment(), "seconds": round(time.perf_counter() - start, 2)}
                    write_run(frame, meta, path)
                _MEMORY[key] = frame
        frame = _MEMORY[key].copy()
        frame["run"] = f"{job.kind}/{key}"
        frame["variant"], frame["job"] = job.variant, key
        for column, value in job.columns:
            frame[column] = value
        frames.append(frame)
    if not frames:
        raise ValueError("run_jobs: no jobs given")
    return pd.concat(frames, ignore_index=True)
