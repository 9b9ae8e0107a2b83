"""The training loop: `train(cfg, out)` -> TrainResult (status per seed, curves, probe rows, folder).

    from analysis.train import TrainConfig, TaskConfig, OptimConfig, train
    result = train(TrainConfig(model=ModelConfig(arch="decoder", placement="post", layers=18),
                               task=TaskConfig(name="markov"), optim=OptimConfig(lr=1e-3),
                               steps=300, seeds=(0, 1, 2)), out="runs")
    result.curves        # run, seed, step, quantity, value  (loss, lr, grad_norm, update_ratio, val_loss)
    result.probes        # analysis.probe.tidy rows with `step` filled in
    result.status        # {seed: "finished" | "diverged"}, result.diverged_step {seed: step | None}

The host dispatches compiled pieces (analysis.train.step) and stays one piece behind: it fetches the
results of piece k only after piece k+1 is queued, so the device never waits on the host. Probe
results come back the same way.

Divergence is a result: a seed whose loss or gradients turn NaN/Inf, or whose loss exceeds the
ceiling, is `diverged` at that step; its rows up to and including that step are kept, later ones are
dropped, the other seeds go on, and the run stops early once every seed has diverged.

With `out`, the run lives in `out/<run_id>/` (analysis.train.store): a finished run is read back
instead of trained, an unfinished one resumes from its last checkpoint (analysis.train.checkpoint).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from analysis.io import environment
from analysis.probe.tidy import to_frame
from analysis.train import checkpoint, store
from analysis.train.config import TrainConfig, from_dict, to_dict
from analysis.train.step import MAX_CHUNK, METRICS, Runtime, abstract_states, program, seed_sharding
from analysis.train.tasks import prepare


@dataclass
class TrainResult:
    """What a run produced (also what `train` returns for a run read back from the store)."""

    config: TrainConfig
    run_id: str
    status: dict[int, str]  # seed -> "finished" | "diverged"
    diverged_step: dict[int, int | None]  # seed -> the step it diverged at, None if it did not
    curves: pd.DataFrame  # run, seed, step, quantity, value
    probes: pd.DataFrame  # analysis.probe.tidy.COLUMNS
    info: dict[str, Any] = field(default_factory=dict)  # task info (entropies, loss floors), schedule, timings
    folder: Path | None = None
    skipped: bool = False  # True: read back from a finished run in the store, not trained now

    @property
    def all_diverged(self) -> bool:
        return all(s == "diverged" for s in self.status.values())


@dataclass(frozen=True)
class Plan:
    """When things happen in a run of `cfg` (steps are 0-based update indices; `steps` = the end)."""

    probes: dict[int, tuple[str, ...]]  # step -> the probe set measured there
    evals: frozenset[int]
    checkpoints: frozenset[int]
    boundaries: tuple[int, ...]

    @classmethod
    def of(cls, cfg: TrainConfig, with_checkpoints: bool) -> "Plan":
        T = cfg.steps
        probes: dict[int, tuple[str, ...]] = {}
        if cfg.probe_every:
            for s in [*range(0, T, cfg.probe_every), T]:
                heavy = bool(cfg.expensive_probes) and s % cfg.expensive_probe_every == 0
                names = cfg.probes + tuple(p for p in cfg.expensive_probes if heavy and p not in cfg.probes)
                if names:
                    probes[s] = names
        evals = frozenset([*(range(0, T, cfg.eval_every) if cfg.eval_every else ()), T])
        ckpts = frozenset([*(range(cfg.checkpoint_every, T, cfg.checkpoint_every) if cfg.checkpoint_every else ()), T])
        ckpts = ckpts if with_checkpoints else frozenset()
        return cls(probes, evals, ckpts, tuple(sorted({0, T, *probes, *evals, *ckpts})))


class _Recorder:
    """Host-side bookkeeping of fetched results (numpy), turned into tidy frames at the end."""

    def __init__(self, cfg: TrainConfig, run_id: str):
        self.cfg, self.run_id = cfg, run_id
        n = len(cfg.seeds)
        self.metrics = {k: np.full((n, cfg.steps), np.nan, np.float32) for k in METRICS}
        self.done = np.zeros(cfg.steps, bool)
        self.val: dict[int, np.ndarray] = {}
        self.probe_frames: list[pd.DataFrame] = []

    def plain(self, start: int, n: int, metrics: dict[str, np.ndarray]) -> None:
        for k in METRICS:
            self.metrics[k][:, start : start + n] = metrics[k][:, :n]
        self.done[start : start + n] = True

    def step(self, step: int, metrics: dict[str, np.ndarray]) -> None:
        if step < self.cfg.steps:  # the final probe's update is discarded: no curve row
            for k in METRICS:
                self.metrics[k][:, step] = metrics[k]
            self.done[step] = True

    def probes(self, step: int, result: dict) -> None:
        self.probe_frames.append(to_frame(result, self.cfg.model, self.cfg.seeds, run=self.run_id, step=step))

    def curves(self) -> pd.DataFrame:
        seeds = np.asarray(self.cfg.seeds, np.int64)
        blocks = []
        steps = np.flatnonzero(self.done)
        for k in METRICS:
            values = self.metrics[k][:, steps]  # (S, n)
            blocks.append(pd.DataFrame({"seed": np.repeat(seeds, len(steps)), "step": np.tile(steps, len(seeds)),
                                        "quantity": k, "value": values.reshape(-1).astype(np.float64)}))  # fmt: skip
        for step, values in sorted(self.val.items()):
            blocks.append(pd.DataFrame({"seed": seeds, "step": step, "quantity": "val_loss", "value": values.astype(np.float64)}))
        frame = pd.concat(blocks, ignore_index=True) if blocks else store.empty_curves()
        frame.insert(0, "run", self.run_id)
        return store.as_curves(frame)


def _after_divergence(frame: pd.DataFrame, diverged: dict[int, int | None]) -> pd.DataFrame:
    """Drop each diverged seed's rows after its divergence step (the step itself is the evidence)."""
    limit = frame["seed"].map(lambda s: diverged.get(int(s)) if diverged.get(int(s)) is not None else np.iinfo(np.int64).max)
    return frame[frame["step"].to_numpy() <= limit.to_numpy()].reset_index(drop=True)


def _sort(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def train(cfg: TrainConfig, out: Path | str | None = None, *, devices: list | None = None,
          progress: bool = False) -> TrainResult:  # fmt: skip
    """Train every seed of `cfg` together (jax.vmap; the seed axis sharded over `devices`).

    Args:
        cfg: the run (analysis.train.config.TrainConfig).
        out: a store folder; the run goes to out/<run_id>/. A finished run there is read back
            (TrainResult.skipped), an unfinished one resumes from its last checkpoint. None = in memory.
        devices: devices to shard the seed axis over (default: all; the largest count that divides
            the number of seeds is used).
        progress: show a tqdm bar over the steps.

    Bad input (task too large for the model, unreadable corpus, ...) raises ValueError before any
    compute and before anything in `out` is touched.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train expects a TrainConfig, got {type(cfg).__name__}")
    data = prepare(cfg.task, cfg.model)
    run_id = store.config_hash(cfg, data.fingerprint)
    folder = None if out is None else Path(out) / run_id
    if folder is not None and store.is_finished(folder):
        return read_result(folder)

    started = time.perf_counter()
    plan = Plan.of(cfg, with_checkpoints=folder is not None)
    prog = program(cfg, data)
    shardings = seed_sharding(len(cfg.seeds), devices)
    put = (lambda x, i: jax.device_put(x, shardings[i])) if shardings else (lambda x, i: x)
    seeds = put(jnp.asarray(cfg.seeds, jnp.uint32), 0)
    arrays = put(data.arrays, 1)
    rt = put(Runtime.of(cfg), 1)
    rec = _Recorder(cfg, run_id)

    start = 0
    if folder is not None:
        store.remove_leftovers(folder)
        meta = {"run_id": run_id, "config": to_dict(cfg), "task_info": data.info}
        store.write_started(folder, meta)
        saved = checkpoint.steps(folder)
        if saved:
            start = saved[-1]
            _, abstract = abstract_states(cfg, shardings[0] if shardings else None)
            states = checkpoint.restore(folder, start, abstract)
            curves, probes = store.read_partial(folder, before=start)
            _replay(rec, curves, probes)
    if start == 0:
        states = prog.init(seeds)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=f"train {run_id[:8]}", unit="step", leave=False)

    pending: list[tuple[str, int, int, Any]] = []  # (kind, step, n, device outputs)
    dead = [False]

    def fetch(entry) -> None:
        kind, step, n, outputs = entry
        outputs = jax.device_get(outputs)
        if kind == "plain":
            rec.plain(step, n, outputs[0])
        elif kind == "probe":
            rec.step(step, outputs[0])
            rec.probes(step, outputs[1])
        else:
            rec.val[step] = np.asarray(outputs[0])
        if kind != "eval":
            dead[0] = not bool(np.any(outputs[-1]))
            if bar is not None:
                bar.update(n)

    def dispatch(kind: str, step: int, n: int, outputs: Any) -> None:
        pending.append((kind, step, n, outputs))
        while len(pending) > 1:  # stay one piece behind the device
            fetch(pending.pop(0))

    def flush() -> None:
        while pending:
            fetch(pending.pop(0))

    T = cfg.steps
    for a, b in zip(plan.boundaries, (*plan.boundaries[1:], None)):
        if a < start:
            continue
        if dead[0]:
            break
        if a in plan.evals:
            dispatch("eval", a, 0, (prog.evaluate(states.params, arrays, rt),))
        if a in plan.checkpoints and a > start and folder is not None:
            flush()
            store.write_partial(folder, rec.curves(), _concat_probes(rec.probe_frames), a)
            checkpoint.save(folder, a, states)
        s = a
        if a in plan.probes:
            new, metrics, result = prog.probed(plan.probes[a])(states, seeds, a, arrays, rt)
            dispatch("probe", a, int(a < T), (metrics, result, new.alive))
            states = new if a < T else states  # the final probe measures the trained model; no update
            s += 1
        if b is None:
            break
        while s < b:
            n = min(MAX_CHUNK, b - s)
            states, metrics = prog.plain(states, seeds, s, n, arrays, rt)
            dispatch("plain", s, n, (metrics, states.alive))
            s += n
    flush()
    if bar is not None:
        bar.close()

    diverged_at = np.asarray(jax.device_get(states.diverged_at))
    diverged = {int(s): (int(d) if d >= 0 else None) for s, d in zip(cfg.seeds, diverged_at)}
    status = {s: ("diverged" if d is not None else "finished") for s, d in diverged.items()}
    curves = _sort(_after_divergence(rec.curves(), diverged), ["seed", "quantity", "step"])
    probes = _sort(_after_divergence(_concat_probes(rec.probe_frames), diverged), ["seed", "step"])
    info = {
        "task": data.info,
        "probe_steps": {str(k): list(v) for k, v in plan.probes.items()},
        "eval_steps": sorted(plan.evals),
        "seconds": round(time.perf_counter() - started, 3),
        "resumed_from": start or None,
        "stopped_early": bool(dead[0]),
        "devices": len(shardings[0].mesh.devices.flat) if shardings else 1,
    }
    result = TrainResult(cfg, run_id, status, diverged, curves, probes, info, folder)
    if folder is not None:
        store.write_finished(folder, curves, probes, _meta(result))
    return result


def _concat_probes(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else store.empty_probes()


def _replay(rec: _Recorder, curves: pd.DataFrame, probes: pd.DataFrame) -> None:
    """Put the rows of a resumed run's partial files back into the recorder."""
    index = {s: i for i, s in enumerate(rec.cfg.seeds)}
    for quantity, rows in curves.groupby("quantity"):
        seeds = rows["seed"].map(index).to_numpy()
        steps = rows["step"].to_numpy()
        if quantity == "val_loss":
            for step, part in rows.groupby("step"):
                values = np.full(len(index), np.nan)
                values[part["seed"].map(index).to_numpy()] = part["value"].to_numpy()
                rec.val[int(step)] = values
        else:
            rec.metrics[quantity][seeds, steps] = rows["value"].to_numpy(np.float32)
            rec.done[steps] = True
    if len(probes):
        rec.probe_frames.append(probes)


def _meta(result: TrainResult) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "config": to_dict(result.config),
        "status": {str(s): {"status": st, "step": result.diverged_step[s]} for s, st in result.status.items()},
        "info": result.info,
        "environment": environment(),
    }


def read_result(folder: Path | str) -> TrainResult:
    """The TrainResult of a finished run folder (skipped=True)."""
    folder = Path(folder)
    curves, probes, meta = store.read_finished(folder)
    cfg = from_dict(meta["config"])
    status = {int(s): v["status"] for s, v in meta["status"].items()}
    diverged = {int(s): v["step"] for s, v in meta["status"].items()}
    return TrainResult(cfg, meta["run_id"], status, diverged, curves, probes, meta.get("info", {}), folder, skipped=True)

