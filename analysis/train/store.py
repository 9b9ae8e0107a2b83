"""The results store: one folder per run, named by a hash of what it computes (`config_hash`).

    DIR/<run_id>/
        run.json          config, task info (entropies, loss floors), environment, status per seed
                          ("finished", or "diverged" with its step), probe schedule, timings.
                          Written LAST: its presence is what "finished" means.
        curves.parquet    scalar curves, tidy: run, seed, step, quantity, value
                          (quantity: loss, lr, grad_norm, update_ratio, val_loss)
        probes.parquet    probe rows, the columns of analysis.probe.tidy.COLUMNS (`run` = run_id,
                          `step` = the training step the probe measured)
        checkpoints/      orbax checkpoints (analysis.train.checkpoint), the final one always
    and, while a run is unfinished:
        started.json      its config (load_model reads it)
        partial/          curves and probes recorded up to its last checkpoint (read on resume)

Every file is written atomically (temporary file, then rename: analysis.io.atomic_write), so a
killed run leaves whole files or none; its temporary leftovers are removed when the run restarts.
Re-running a finished config reads it back instead of training, whichever way its seeds were
computed (the id names what a run computes, not how).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from analysis.execution import ExecutionPlan
from analysis.identity import code_fingerprint, content_id
from analysis.io import atomic_write
from analysis.probe.tidy import COLUMNS, DTYPES
from analysis.train.config import TrainConfig, to_dict

STORE_VERSION = 2  # bump when the meaning of stored numbers changes: old runs then get new folders
RUN_JSON, CURVES, PROBES = "run.json", "curves.parquet", "probes.parquet"
PARTIAL, CHECKPOINTS, STARTED = "partial", "checkpoints", "started.json"
CURVE_COLUMNS = ("run", "seed", "step", "quantity", "value")
# Columns added to curve and probe rows by load_runs: what tells the runs of a sweep apart.
RUN_COLUMNS = ("run", "task", "arch", "placement", "norm", "layers", "d_model", "lr", "schedule",
               "warmup_steps", "steps", "status", "diverged_step", "seed_programs")  # fmt: skip


code_fingerprint()  # read when this module is imported: the code this process runs
# A run computed with the parameters' dtype throughout: what `numerics` means when none is given.
PLAIN_NUMERICS: dict[str, Any] = ExecutionPlan().numerics_key()


def config_hash(cfg: TrainConfig, fingerprint: str = "", *, numerics: dict[str, Any] | None = None) -> str:
    """A run's id: analysis.identity.content_id of what the run computes, never of how.

    In it: the config (model math, task, optimizer, steps, seeds, what is recorded), the data's
    fingerprint (a custom corpus' content hash), `numerics` (the execution plan's `numerics_key()`:
    choices that move numbers beyond float rounding, such as bfloat16 compute; None = PLAIN_NUMERICS),
    the code fingerprint (analysis.identity.code_fingerprint) and STORE_VERSION. Not in it: the rest
    of the execution plan (layer loop, recomputation, seeds vmapped or a program each, streams,
    devices): those change numbers by float rounding only, so a run computed either way is the same
    run (run.json's `info` records how it was computed).
    """
    return content_id({"config": to_dict(cfg), "numerics": PLAIN_NUMERICS if numerics is None else numerics,
                       "data": fingerprint, "code": code_fingerprint(), "store": STORE_VERSION})  # fmt: skip


CURVE_DTYPES = {"run": object, "seed": np.int64, "step": np.int64, "quantity": object, "value": np.float64}


def as_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """The curve columns with their dtypes (parquet reads strings back as pandas' string dtype)."""
    return frame[list(CURVE_COLUMNS)].astype(CURVE_DTYPES)


def as_probes(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[list(COLUMNS)].astype(DTYPES)


def empty_curves() -> pd.DataFrame:
    return pd.DataFrame({"run": pd.Series(dtype=object), "seed": pd.Series(dtype=np.int64),
                         "step": pd.Series(dtype=np.int64), "quantity": pd.Series(dtype=object),
                         "value": pd.Series(dtype=np.float64)})  # fmt: skip


def empty_probes() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=DTYPES[c]) for c in COLUMNS})


def is_finished(folder: Path) -> bool:
    return (Path(folder) / RUN_JSON).is_file()


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the temporary files a killed writer left (atomic_write's `.NAME.*.tmp`); returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def write_partial(folder: Path, curves: pd.DataFrame, probes: pd.DataFrame, step: int) -> None:
    """Rows recorded before checkpoint `step` of an unfinished run (read back on resume)."""
    part = Path(folder) / PARTIAL
    _write_parquet(part / CURVES, curves)
    _write_parquet(part / PROBES, probes)
    _write_json(part / "partial.json", {"step": int(step)})


def read_partial(folder: Path, before: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of steps < `before` from the partial files (empty frames when there are none)."""
    part = Path(folder) / PARTIAL
    if not (part / CURVES).is_file() or not (part / PROBES).is_file():
        return empty_curves(), empty_probes()
    curves, probes = as_curves(pd.read_parquet(part / CURVES)), as_probes(pd.read_parquet(part / PROBES))
    return curves[curves["step"] < before].reset_index(drop=True), probes[probes["step"] < before].reset_index(drop=True)


def write_finished(folder: Path, curves: pd.DataFrame, probes: pd.DataFrame, meta: dict[str, Any]) -> None:
    """The run's results; run.json last, so a run counts as finished only once its rows are whole."""
    folder = Path(folder)
    _write_parquet(folder / CURVES, curves)
    _write_parquet(folder / PROBES, probes)
    _write_json(folder / RUN_JSON, meta)
    # The scaffolding of an unfinished run is no longer needed (a kill here leaves only redundancy,
    # removed when the finished run is next read back by `train`).
    remove_scaffolding(folder)


def remove_scaffolding(folder: Path) -> None:
    """Delete a finished run's leftover partial rows and started.json (its results stay untouched)."""
    shutil.rmtree(Path(folder) / PARTIAL, ignore_errors=True)
    (Path(folder) / STARTED).unlink(missing_ok=True)


def write_started(folder: Path, meta: dict[str, Any]) -> None:
    """started.json of a run in progress (what load_model reads before the run finishes)."""
    _write_json(Path(folder) / STARTED, meta)


def read_meta(folder: Path) -> dict[str, Any]:
    """run.json of a finished run, else started.json of an unfinished one."""
    folder = Path(folder)
    for name in (RUN_JSON, STARTED):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    raise ValueError(f"{folder} is not a run folder (no {RUN_JSON} or {STARTED})")


def read_finished(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    folder = Path(folder)
    curves, probes = as_curves(pd.read_parquet(folder / CURVES)), as_probes(pd.read_parquet(folder / PROBES))
    return curves, probes, json.loads((folder / RUN_JSON).read_text())


# ---------------------------------------------------------------------------------------------
# Reading many runs for notebooks.
# ---------------------------------------------------------------------------------------------
def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def _run_folders(folder: Path) -> list[Path]:
    folder = Path(folder)
    if is_finished(folder):
        return [folder]
    return sorted(p.parent for p in folder.glob(f"*/{RUN_JSON}"))


def _per_seed(meta: dict[str, Any]) -> pd.DataFrame:
    cfg = meta["config"]
    rows = []
    for seed, st in meta["status"].items():
        rows.append({
            "run": meta["run_id"], "seed": int(seed), "task": cfg["task"]["name"], "arch": cfg["model"]["arch"],
            "placement": cfg["model"]["placement"], "norm": cfg["model"]["norm"], "layers": cfg["model"]["layers"],
            "d_model": cfg["model"]["d_model"], "lr": cfg["optim"]["lr"], "schedule": cfg["optim"]["schedule"],
            "warmup_steps": cfg["optim"]["warmup_steps"], "steps": cfg["steps"], "status": st["status"],
            "diverged_step": -1 if st["step"] is None else int(st["step"]),
            # how the seeds were computed (analysis.train.seeds); runs stored before it are vmapped
            "seed_programs": meta.get("info", {}).get("seed_programs", "vmapped"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def load_runs(folder: Path | str, what: str = "curves", *, columns: Iterable[str] = ()) -> pd.DataFrame:
    """Every finished run under `folder` (or the run folder itself) as one DataFrame.

    Args:
        folder: a store (DIR holding <run_id>/ folders, e.g. a sweep's --out) or one run folder.
        what: "curves" (one row per run, seed, step, quantity), "probes" (the tidy probe rows) or
            "runs" (one row per run and seed with status, diverged_step, the last training and
            validation loss, and every config field as a dotted column, e.g. "optim.lr").
        columns: extra dotted config fields to attach to curve/probe rows. Fields that differ
            between the runs found are attached anyway, so a sweep's axes are always columns.

    Curve and probe rows carry RUN_COLUMNS (run id, task, arch, placement, norm, layers, d_model,
    lr, schedule, warmup_steps, steps, status, diverged_step, seed_programs) so figures can select
    on them (seed_programs says how a run's seeds were computed: information, not identity).
    Unfinished runs are left out.
    """
    valid = ("curves", "probes", "runs")
    if what not in valid:
        raise ValueError(f"unknown what {what!r}; valid choices: {', '.join(valid)}")
    folders = _run_folders(Path(folder))
    metas = [json.loads((f / RUN_JSON).read_text()) for f in folders]
    flat = {m["run_id"]: _flatten(m["config"]) for m in metas}
    fields = list(dict.fromkeys(k for f in flat.values() for k in f))
    varying = [k for k in fields if len({repr(f.get(k)) for f in flat.values()}) > 1 and k != "seeds"]
    extra = list(dict.fromkeys([*columns, *varying]))
    unknown = [c for c in extra if c not in fields]
    if unknown and metas:
        raise ValueError(f"unknown config field(s) {unknown}; valid: {', '.join(fields)}")
    if not metas:
        return {"curves": empty_curves, "probes": empty_probes}.get(what, pd.DataFrame)()

    per_seed = pd.concat([_per_seed(m) for m in metas], ignore_index=True)
    for col in extra:
        per_seed[col] = per_seed["run"].map(lambda r, col=col: flat[r].get(col))
    if what == "runs":
        out = per_seed
        for f, m in zip(folders, metas):
            curves = pd.read_parquet(f / CURVES)
            for q in ("loss", "val_loss"):
                last = curves[curves["quantity"] == q].sort_values("step").groupby("seed")["value"].last()
                mask = out["run"] == m["run_id"]
                out.loc[mask, f"final_{q}"] = out.loc[mask, "seed"].map(last).to_numpy(dtype=float)
        for col in fields:
            if col not in out.columns and col != "seeds":
                out[col] = out["run"].map(lambda r, col=col: flat[r].get(col))
        return out.reset_index(drop=True)

    name, normalize = (CURVES, as_curves) if what == "curves" else (PROBES, as_probes)
    frames = [normalize(pd.read_parquet(f / name)) for f in folders]
    rows = pd.concat(frames, ignore_index=True) if frames else empty_curves()
    add = [c for c in per_seed.columns if c not in rows.columns or c in ("run", "seed")]
    return rows.merge(per_seed[add], on=["run", "seed"], how="left")
