"""Sweeps: a grid over any config fields (dotted names), from Python or from a TOML/JSON file.

    lnscope sweep sweep.toml --out runs/

    # sweep.toml
    [base]                       # one TrainConfig; nested tables or dotted keys, defaults elsewhere
    steps = 300
    seeds = 3                    # an int n means seeds 0..n-1 (each run trains them all; analysis.train.seeds)
    model = { arch = "decoder", layers = 18, d_model = 128, heads = 4, d_ff = 512, vocab = 256 }
    task = { name = "markov" }

    [grid]                       # every combination is one run (one folder)
    "model.placement" = ["post", "pre", "b2t", "residual"]
    "optim.lr" = [3e-4, 1e-3]
    "optim.schedule" = ["constant"]

Unknown keys anywhere are an error naming the valid ones; so is an empty grid. Every config of the
grid is built (and validated) before the first run starts. Runs already finished in `out` are read
back, not recomputed, so a killed sweep is resumed by running it again.

Several sweeps (or array tasks, or reruns) may share one `out`: each run is claimed by the process
that computes it (analysis.train.store.claim_run). A sweep first computes the runs nobody else has
claimed, then waits for the ones others compute and reads them back; a run whose owner died is
taken over and resumed from its checkpoint. Every run is computed once.

Several machines (a cluster job array): `lnscope sweep FILE --shard i/N` (`run_sweep(..., shard=(i, N))`)
computes only shard i of N, the grid points whose index in the grid's own order is i modulo N
(`shard_indices`). Each shard's table lists its own runs; `load_runs(out)` sees every shard's.

Devices. On a CPU with one device each seed of a run trains in a program of its own, one per core
at once (analysis.train.seeds). Elsewhere each run vmaps its seeds; `train` shards that seed axis
over the local devices (jit + vmap over sharded inputs), so on a machine with several GPUs the same
command uses them all: give a
number of seeds that the device count divides. On several hosts, start one process per host with
`jax.distributed.initialize()` before `run_sweep` (or `lnscope sweep`): `jax.devices()` then spans
every host, the seed axis is sharded across all of them, and orbax writes each checkpoint from all
processes together. Every process must see the same `out` folder (a shared file system).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from analysis.execution import ExecutionPlan
from analysis.train.config import TrainConfig, _merge, from_dict, to_dict
from analysis.train.loop import train
from analysis.train.store import RunClaimed

FILE_KEYS = ("base", "grid")
SHARD_FORMAT = re.compile(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/N"` -> (i, N), the CLI's `--shard` (`$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`);
    a ValueError naming the value and what is valid unless i and N are integers with 0 <= i < N."""
    match = SHARD_FORMAT.fullmatch(text)
    if match is None:
        raise ValueError(f"--shard {text!r} is not i/N: give two integers with 0 <= i < N, e.g. 0/4")
    return check_shard((int(match[1]), int(match[2])), name=f"--shard {text!r}")


def check_shard(shard: tuple[int, int], *, name: str | None = None) -> tuple[int, int]:
    """`shard` (i, N) itself when i and N are integers with 0 <= i < N; else a ValueError naming it."""
    name = name or f"shard {shard!r}"
    try:
        index, count = shard
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a pair (i, N) of integers with 0 <= i < N") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, count)):
        raise ValueError(f"{name} is not a pair (i, N) of integers with 0 <= i < N")
    if count < 1:
        raise ValueError(f"{name}: the number of shards N must be >= 1, got {count}")
    if not 0 <= index < count:
        raise ValueError(f"{name}: the shard index i must be in 0..{count - 1} (0 <= i < N = {count}), got {index}")
    return index, count


def shard_indices(runs: int, shard: tuple[int, int]) -> list[int]:
    """The grid indices (into `Sweep.configs()`) that shard (i, N) computes: those equal to i modulo N.

    Split by index, not by a hash of the run id: the grid's order is fixed by the sweep file alone
    (the first field varies slowest), so every machine of a job array computes the same split with no
    shared state, the shards' sizes differ by at most one, and neighbouring grid points (which often
    differ only in the fastest-varying field, e.g. the learning rate) go to different shards, so no
    shard gets all the slow settings of one slow-varying field. Every index is in exactly one shard.
    """
    index, count = check_shard(shard)
    return list(range(index, runs, count))


def progress_text(run_id: str, *, skipped: bool, diverged_seeds: list[int] | tuple[int, ...]) -> str:
    """The sweep bar's postfix for a finished run: which run, and which of its seeds diverged (their
    seed numbers, so "0" is never read as a count)."""
    if skipped:
        state = "read back from the store"
    elif diverged_seeds:
        state = f"diverged seeds: {', '.join(str(s) for s in diverged_seeds)}"
    else:
        state = "no seed diverged"
    return f"run {run_id[:8]}, {state}"


def final_val_loss(curves: pd.DataFrame, diverged_seeds: Iterable[int] = ()) -> float:
    """The mean over a run's seeds of each seed's last val_loss (its value at the seed's largest
    evaluated step), from the run's curves (columns seed, step, quantity, value).

    The seeds in `diverged_seeds` are left out: a diverged seed stops training, so its last
    evaluation predates the divergence (often the initialization's) and is no final loss. So is a
    seed whose last value is NaN or infinite. NaN when no seed is left (no evaluation ran, or every
    seed diverged); the summary's diverged_seeds column says which case.
    """
    val = curves[(curves["quantity"] == "val_loss") & ~curves["seed"].isin(list(diverged_seeds))]
    if val.empty:
        return math.nan
    # tail, not groupby.last: last() skips NaN and would report an earlier evaluation
    last = val.sort_values("step", kind="stable").groupby("seed").tail(1)["value"].to_numpy(dtype=float)
    finite = last[np.isfinite(last)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass(frozen=True)
class Sweep:
    """A base config and a grid: {dotted field: values}; runs = the product of the grid's values."""

    base: TrainConfig
    grid: tuple[tuple[str, tuple[Any, ...]], ...]

    def __post_init__(self) -> None:
        if not self.grid:
            raise ValueError(
                "the sweep's grid is empty; give at least one field with a list of values "
                "(a single run is `lnscope train`)"
            )
        for name, values in self.grid:
            if not values:
                raise ValueError(f"grid field {name!r} has no values: the grid is empty")

    def configs(self) -> list[TrainConfig]:
        """Every run of the grid, validated (the first field varies slowest)."""
        names = [n for n, _ in self.grid]
        base = to_dict(self.base)
        return [
            from_dict(_merge(base, dict(zip(names, combo)))) for combo in itertools.product(*(v for _, v in self.grid))
        ]


def _dotted(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"placement": [...]}} -> {"model.placement": [...]} (TOML dotted keys nest tables)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def sweep_from_dict(data: Mapping[str, Any]) -> Sweep:
    """The Sweep of a parsed file: {"base": {...}, "grid": {...}}; unknown keys are an error."""
    unknown = [k for k in data if k not in FILE_KEYS]
    if unknown:
        raise ValueError(f"unknown sweep key(s) {unknown}; valid keys: {', '.join(FILE_KEYS)}")
    base = dict(data.get("base", {}) or {})
    if isinstance(base.get("seeds"), int) and not isinstance(base.get("seeds"), bool):
        base["seeds"] = list(range(base["seeds"]))
    base_cfg = TrainConfig().replace(**_dotted(base))
    grid = []
    for name, values in _dotted(data.get("grid", {}) or {}).items():
        if not isinstance(values, list):
            raise ValueError(f"grid field {name!r} must be a list of values, got {values!r}")
        base_cfg.replace(**{name: values[0]} if values else {})  # an unknown field name fails here
        grid.append((name, tuple(tuple(v) if isinstance(v, list) else v for v in values)))
    sweep = Sweep(base_cfg, tuple(grid))
    sweep.configs()  # validate every run before any compute
    return sweep


def load_sweep(path: Path | str) -> Sweep:
    """Read a sweep from a .toml or .json file (never pickle)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"sweep file {str(path)!r} cannot be read: {err}") from None
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"sweep file {str(path)!r} is not valid TOML: {err}") from None
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"sweep file {str(path)!r} is not valid JSON: {err}") from None
    else:
        raise ValueError(f"sweep file {str(path)!r} must end in .toml or .json")
    if not isinstance(data, dict):
        raise ValueError(f"sweep file {str(path)!r} must hold a table with keys {', '.join(FILE_KEYS)}")
    return sweep_from_dict(data)


def run_sweep(
    sweep: Sweep | Mapping[str, Any] | Path | str,
    out: Path | str,
    *,
    devices: list | None = None,
    progress: bool = True,
    vmap_seeds: bool | None = None,
    streams: int | None = None,
    plan: ExecutionPlan | None = None,
    shard: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Train every run of `sweep` into `out` (finished runs are read back, not recomputed);
    `devices`, `vmap_seeds`, `streams` and the execution `plan` go to each `train` call.
    `shard=(i, N)` trains only shard i of N (`shard_indices`: the grid indices equal to i modulo N),
    for one task of a job array; the N shards together are the whole grid.

    Returns one row per run (of the shard): run_id, folder, skipped, seconds, the number of diverged
    seeds, final_val_loss (`final_val_loss`: the mean over the seeds that did not diverge of each one's
    last val_loss; NaN without evaluation or when every seed diverged), and one column per grid field.
    Read the results with `analysis.train.load_runs(out)`, which sees the runs of every shard.
    """
    if shard is not None:
        check_shard(shard)  # before the file is read and before any compute
    if isinstance(sweep, (str, Path)):
        sweep = load_sweep(sweep)
    elif not isinstance(sweep, Sweep):
        sweep = sweep_from_dict(sweep)
    configs = sweep.configs()
    names = [n for n, _ in sweep.grid]
    mine = shard_indices(len(configs), shard) if shard is not None else list(range(len(configs)))
    bar = None
    if progress:
        desc = "sweep" if shard is None else f"sweep shard {shard[0]}/{shard[1]}"
        bar = tqdm(total=len(mine), desc=desc, unit="run")
    # Runs another process holds come last (waited for, then read back), so concurrent sweeps split the grid.
    order, deferred = list(mine), []
    rows_at: dict[int, dict[str, Any]] = {}
    for index in order:
        cfg = configs[index]
        start = time.perf_counter()
        try:
            result = train(
                cfg, out, plan=plan, devices=devices, vmap_seeds=vmap_seeds, streams=streams, wait=index in deferred
            )
        except RunClaimed:
            deferred.append(index)
            order.append(index)
            continue
        diverged = [seed for seed, status in result.status.items() if status == "diverged"]
        values = to_dict(cfg)
        row = {
            "run_id": result.run_id,
            "folder": str(result.folder),
            "skipped": result.skipped,
            "seconds": round(time.perf_counter() - start, 3),
            "diverged_seeds": len(diverged),
            "seeds": len(cfg.seeds),
            "final_val_loss": final_val_loss(result.curves, diverged),
        }
        for name in names:
            head, _, tail = name.partition(".")
            row[name] = values[head][tail] if tail else values[head]
        rows_at[index] = row
        if bar is not None:
            bar.set_postfix_str(progress_text(result.run_id, skipped=result.skipped, diverged_seeds=diverged))
            bar.update(1)
    if bar is not None:
        bar.close()
    rows = [rows_at[i] for i in sorted(rows_at)]  # the grid's order, however the runs were shared
    return pd.DataFrame(rows)
