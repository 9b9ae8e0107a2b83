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

Faults (docs/training.md, "Faults"):
    claim.json        while a process computes the run: its pid, host and a heartbeat (the file's
                      mtime). Created with O_EXCL, so of several writers on one store (concurrent
                      sweeps, array tasks, reruns) exactly one computes a run; the others wait for it
                      and read the result back. A dead owner's claim (same host and its pid gone, or
                      from another host a heartbeat older than CLAIM_STALE_S) is taken over, resuming
                      from its checkpoint.
    run.json "files"  each result file's row count and sha256: reading a run verifies them, and a
                      damaged run (DamagedRun: its path and what is wrong) is never served.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from analysis.execution import ExecutionPlan
from analysis.identity import code_fingerprint, content_id
from analysis.io import atomic_write
from analysis.probe.tidy import COLUMNS, DTYPES
from analysis.train.config import TrainConfig, to_dict

STORE_VERSION = 2  # bump when the meaning of stored numbers changes: old runs then get new folders
RUN_JSON, CURVES, PROBES = "run.json", "curves.parquet", "probes.parquet"
PARTIAL, CHECKPOINTS, STARTED = "partial", "checkpoints", "started.json"
CLAIM = "claim.json"
CURVE_COLUMNS = ("run", "seed", "step", "quantity", "value")
# Columns added to curve and probe rows by load_runs: what tells the runs of a sweep apart.
RUN_COLUMNS = (
    "run",
    "task",
    "arch",
    "placement",
    "norm",
    "layers",
    "d_model",
    "lr",
    "schedule",
    "warmup_steps",
    "steps",
    "status",
    "diverged_step",
    "seed_programs",
)


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
    return content_id(
        {
            "config": to_dict(cfg),
            "numerics": PLAIN_NUMERICS if numerics is None else numerics,
            "data": fingerprint,
            "code": code_fingerprint(),
            "store": STORE_VERSION,
        }
    )


CURVE_DTYPES = {"run": object, "seed": np.int64, "step": np.int64, "quantity": object, "value": np.float64}


def as_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """The curve columns with their dtypes (parquet reads strings back as pandas' string dtype)."""
    return frame[list(CURVE_COLUMNS)].astype(CURVE_DTYPES)


def as_probes(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[list(COLUMNS)].astype(DTYPES)


def empty_curves() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run": pd.Series(dtype=object),
            "seed": pd.Series(dtype=np.int64),
            "step": pd.Series(dtype=np.int64),
            "quantity": pd.Series(dtype=object),
            "value": pd.Series(dtype=np.float64),
        }
    )


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
    return curves[curves["step"] < before].reset_index(drop=True), probes[probes["step"] < before].reset_index(
        drop=True
    )


def write_finished(folder: Path, curves: pd.DataFrame, probes: pd.DataFrame, meta: dict[str, Any]) -> None:
    """The run's results; run.json last, so a run counts as finished only once its rows are whole."""
    folder = Path(folder)
    _write_parquet(folder / CURVES, curves)
    _write_parquet(folder / PROBES, probes)
    meta = {
        **meta,
        "files": {CURVES: file_record(folder / CURVES, len(curves)), PROBES: file_record(folder / PROBES, len(probes))},
    }
    _write_json(folder / RUN_JSON, meta)
    # The scaffolding of an unfinished run is no longer needed (a kill here leaves only redundancy,
    # removed when the finished run is next read back by `train`).
    remove_scaffolding(folder)


def remove_scaffolding(folder: Path) -> None:
    """Delete a finished run's leftover partial rows and started.json (its results stay untouched).
    Nothing to delete is nothing to do: a finished run on a read-only store is read back, and a
    leftover there stays (`unlink(missing_ok=True)` covers "not found" only, not a read-only file system)."""
    folder = Path(folder)
    if (folder / PARTIAL).exists():
        shutil.rmtree(folder / PARTIAL, ignore_errors=True)
    if (folder / STARTED).exists():
        try:
            (folder / STARTED).unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise


def write_started(folder: Path, meta: dict[str, Any]) -> None:
    """started.json of a run in progress (what load_model reads before the run finishes)."""
    _write_json(Path(folder) / STARTED, meta)


def read_meta(folder: Path) -> dict[str, Any]:
    """run.json of a finished run, else started.json of an unfinished one."""
    folder = Path(folder)
    for name in (RUN_JSON, STARTED):
        if (folder / name).is_file():
            return _read_json(folder / name)
    raise ValueError(f"{folder} is not a run folder (no {RUN_JSON} or {STARTED})")


def read_finished(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """A finished run's curves, probes and run.json, verified first (DamagedRun if not whole)."""
    folder = Path(folder)
    meta = verify_run(folder)
    curves, probes = as_curves(pd.read_parquet(folder / CURVES)), as_probes(pd.read_parquet(folder / PROBES))
    return curves, probes, meta


# ---------------------------------------------------------------------------------------------
# Damage: each result file's row count and checksum in run.json, verified on reading.
# ---------------------------------------------------------------------------------------------
class DamagedRun(ValueError):
    """A finished run whose files are not what its run.json recorded (`path`, `problem`)."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(
            f"damaged run {self.path}: {problem}; move the folder aside (a rerun of its config "
            f"computes it again) or delete it"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path, rows: int) -> dict[str, Any]:
    """{"rows": rows, "sha256": hex digest of the file's bytes}, as run.json's "files" holds them."""
    return {"rows": int(rows), "sha256": _sha256(Path(path))}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedRun(Path(path).parent, f"{Path(path).name} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DamagedRun(Path(path).parent, f"{Path(path).name} does not hold a JSON object")
    return data


def verify_run(folder: Path) -> dict[str, Any]:
    """run.json of a finished run after checking that it parses and that each result file is there
    with the row count and sha256 recorded (runs stored before checksums: present and readable rows).
    Raises DamagedRun naming the folder and what is wrong."""
    folder = Path(folder)
    meta = _read_json(folder / RUN_JSON)
    missing = [k for k in ("run_id", "config", "status") if k not in meta]
    if missing:
        raise DamagedRun(folder, f"{RUN_JSON} lacks {', '.join(missing)}")
    records = meta.get("files") or {}
    for name in (CURVES, PROBES):
        path = folder / name
        if not path.is_file():
            raise DamagedRun(folder, f"{name} is missing")
        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as err:  # noqa: BLE001 - any unreadable parquet is damage
            raise DamagedRun(folder, f"{name} is not a readable parquet file ({err})") from None
        record = records.get(name)
        if record is None:
            continue
        if rows != record["rows"]:
            raise DamagedRun(folder, f"{name} holds {rows} rows, {RUN_JSON} recorded {record['rows']}")
        if _sha256(path) != record["sha256"]:
            raise DamagedRun(folder, f"{name} does not match the sha256 {RUN_JSON} recorded (changed after the run)")
    return meta


def damage(folder: Path) -> str | None:
    """What is wrong with a finished run folder, or None when it is whole."""
    try:
        verify_run(folder)
    except DamagedRun as err:
        return err.problem
    return None


def move_aside(folder: Path) -> Path:
    """Rename a (damaged) run folder to `<run_id>.damaged-<time>` beside it, kept for inspection; returns it."""
    folder = Path(folder)
    aside = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
    os.rename(folder, aside)
    return aside


# ---------------------------------------------------------------------------------------------
# Claims: one writer per run, on one machine or many sharing a file system.
# ---------------------------------------------------------------------------------------------
CLAIM_HEARTBEAT_S = 10.0  # how often an owner touches its claim file
CLAIM_STALE_S = 120.0  # a claim untouched this long is dead (its owner's host crashed or lost the store)
CLAIM_POLL_S = 0.5  # how often a writer waiting for another's claim looks again


class RunClaimed(RuntimeError):
    """Another live process computes this run (raised by `claim_run(..., wait=False)`)."""

    def __init__(self, folder: Path, owner: dict[str, Any]):
        self.folder, self.owner = Path(folder), owner
        super().__init__(f"{folder} is being computed by pid {owner.get('pid')} on {owner.get('host')}")


def _claim_owner(path: Path) -> tuple[dict[str, Any], os.stat_result] | None:
    """(the claim's record, its stat) or None when there is no claim file."""
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        owner = {}  # being written this instant, or a writer died mid-write: judged by its age
    return (owner if isinstance(owner, dict) else {}), stat


def claim_is_dead(owner: dict[str, Any], stat: os.stat_result, now: float | None = None) -> bool:
    """A claim whose owner cannot finish: taken on this host by a process that is gone, or from
    elsewhere (or unreadable) with a heartbeat (mtime) older than CLAIM_STALE_S. A live process on
    this host keeps its claim however long it stalls (a long compile holding the interpreter)."""
    now = time.time() if now is None else now
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return now - stat.st_mtime > CLAIM_STALE_S
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class RunClaim:
    """This process' claim on a run folder: a heartbeat thread touches the claim file until `release`."""

    def __init__(self, folder: Path, token: str):
        self.folder, self.token = Path(folder), token
        self.path = self.folder / CLAIM
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="lnscope-claim", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(CLAIM_HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # gone (taken over after a long stall) or the store is unreachable: stop beating
                return

    def held(self) -> bool:
        found = _claim_owner(self.path)
        return found is not None and found[0].get("token") == self.token

    def release(self) -> None:
        """Stop the heartbeat and delete the claim file if it is still this process' claim."""
        self._stop.set()
        if self.held():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _try_claim(folder: Path) -> RunClaim | None:
    """Create the claim file with O_EXCL (atomic on local and NFSv3+ file systems): a RunClaim, or
    None when another claim exists. OSError (read-only store, disk full) propagates."""
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    record = {"pid": os.getpid(), "host": socket.gethostname(), "token": token, "since": time.time()}
    try:
        fd = os.open(folder / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    try:
        os.write(fd, json.dumps(record).encode())
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            (folder / CLAIM).unlink()
        raise
    os.close(fd)
    return RunClaim(folder, token)


def _take_over(folder: Path, stat: os.stat_result) -> None:
    """Remove a dead claim, unless another writer replaced it meanwhile: the file is renamed to a
    name of this process' own (atomic; of several takers one wins) and put back if it is not the
    file judged dead."""
    path = folder / CLAIM
    grave = folder / f".{CLAIM}.{uuid.uuid4().hex}.dead"
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return
    if os.stat(grave).st_ino != stat.st_ino:  # a fresh claim: give it back (link never overwrites)
        with contextlib.suppress(FileExistsError):
            os.link(grave, path)
    grave.unlink()


@contextlib.contextmanager
def claim_run(folder: Path, *, wait: bool = True) -> Iterator[RunClaim | None]:
    """The right to compute the run in `folder`, for the `with` block; None when the run is finished
    and whole (read it back). A live claim of another process is waited for (`wait`; its result is
    then read back) or raises RunClaimed; a dead one is taken over (the run resumes from its
    checkpoint). A finished but damaged run is moved aside (`move_aside`, with a warning) and computed
    again. On a read-only store this raises OSError before any compute unless the run is finished."""
    folder = Path(folder)
    claim, waited = None, False
    while claim is None:
        if is_finished(folder) and damage(folder) is None:
            yield None
            return
        claim = _try_claim(folder)
        if claim is not None:
            if is_finished(folder):  # finished by another between our look and our claim
                problem = damage(folder)
                if problem is None:
                    claim.release()
                    yield None
                    return
                aside = move_aside(folder)  # the claim file goes with it
                claim.release()
                claim = None
                warnings.warn(
                    f"damaged run {folder}: {problem}; moved aside to {aside.name} and computed again", stacklevel=3
                )
            continue
        found = _claim_owner(folder / CLAIM)
        if found is None:
            continue
        owner, stat = found
        if claim_is_dead(owner, stat):
            _take_over(folder, stat)
        elif not wait:
            raise RunClaimed(folder, owner)
        else:
            if not waited:
                print(
                    f"{folder.name}: computed by pid {owner.get('pid')} on {owner.get('host')}; waiting for it",
                    file=sys.stderr,
                )
                waited = True
            time.sleep(CLAIM_POLL_S)
    try:
        yield claim
    finally:
        claim.release()


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
    return sorted(p.parent for p in folder.glob(f"*/{RUN_JSON}") if ".damaged-" not in p.parent.name)


def _verified(folders: list[Path], strict: bool) -> tuple[list[Path], list[dict[str, Any]]]:
    """The whole runs among `folders` and their run.json; damaged ones warned about and left out
    (`strict`: raised)."""
    kept, metas = [], []
    for f in folders:
        try:
            metas.append(verify_run(f))
        except DamagedRun as err:
            if strict:
                raise
            warnings.warn(f"{err} (left out of load_runs)", stacklevel=3)
            continue
        kept.append(f)
    return kept, metas


def _per_seed(meta: dict[str, Any]) -> pd.DataFrame:
    cfg = meta["config"]
    rows = []
    for seed, st in meta["status"].items():
        rows.append(
            {
                "run": meta["run_id"],
                "seed": int(seed),
                "task": cfg["task"]["name"],
                "arch": cfg["model"]["arch"],
                "placement": cfg["model"]["placement"],
                "norm": cfg["model"]["norm"],
                "layers": cfg["model"]["layers"],
                "d_model": cfg["model"]["d_model"],
                "lr": cfg["optim"]["lr"],
                "schedule": cfg["optim"]["schedule"],
                "warmup_steps": cfg["optim"]["warmup_steps"],
                "steps": cfg["steps"],
                "status": st["status"],
                "diverged_step": -1 if st["step"] is None else int(st["step"]),
                # how the seeds were computed (analysis.train.seeds); runs stored before it are vmapped
                "seed_programs": meta.get("info", {}).get("seed_programs", "vmapped"),
            }
        )
    return pd.DataFrame(rows)


def load_runs(
    folder: Path | str, what: str = "curves", *, columns: Iterable[str] = (), strict: bool = False
) -> pd.DataFrame:
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
    Unfinished runs are left out. Each run is verified first (`verify_run`): a damaged one is left
    out with a warning naming it and what is wrong, or raises DamagedRun with `strict=True`.
    """
    valid = ("curves", "probes", "runs")
    if what not in valid:
        raise ValueError(f"unknown what {what!r}; valid choices: {', '.join(valid)}")
    folders, metas = _verified(_run_folders(Path(folder)), strict)
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
