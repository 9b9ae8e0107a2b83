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
from tqdm.auto import tqdm

from analysis.execution import ExecutionPlan, default_plan
from analysis.io import environment
from analysis.memory import check_train_memory
from analysis.probe.tidy import to_frame
from analysis.runtime import default_streams
from analysis.train import checkpoint, distributed, store
from analysis.train.config import TrainConfig, from_dict, to_dict
from analysis.train.seeds import PerSeed, Vmapped, choose_mode
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
    def of(cls, cfg: TrainConfig, with_checkpoints: bool) -> Plan:
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
            blocks.append(
                pd.DataFrame(
                    {
                        "seed": np.repeat(seeds, len(steps)),
                        "step": np.tile(steps, len(seeds)),
                        "quantity": k,
                        "value": values.reshape(-1).astype(np.float64),
                    }
                )
            )
        for step, values in sorted(self.val.items()):
            blocks.append(
                pd.DataFrame({"seed": seeds, "step": step, "quantity": "val_loss", "value": values.astype(np.float64)})
            )
        frame = pd.concat(blocks, ignore_index=True) if blocks else store.empty_curves()
        frame.insert(0, "run", self.run_id)
        return store.as_curves(frame)


def restart_rate(bar: tqdm) -> None:
    """Count `bar`'s rate and ETA from now on: called after the first piece, whose time is mostly
    compilation, so the ETA is the steps' pace, not the compiler's (elapsed restarts with it)."""
    if bar.disable:  # no output (e.g. not a terminal): nothing is timed
        return
    bar.initial = bar.last_print_n = bar.n
    bar.start_t = bar.last_print_t = bar._time()
    bar._ema_dn, bar._ema_dt = type(bar._ema_dn)(bar.smoothing), type(bar._ema_dt)(bar.smoothing)
    bar.refresh()


class _Pipeline:
    """Dispatched pieces whose results the host fetches one piece late, so the device never waits.

    `dispatch` queues a piece's device outputs and fetches every older piece (blocking only on those,
    which are done or nearly); `flush` fetches the rest. `all_diverged` reflects the last fetched piece.
    """

    def __init__(self, rec: _Recorder, steps: int, start: int, progress: bool, run_id: str):
        self.rec, self.pending, self.all_diverged = rec, [], False
        self.dead: frozenset[int] = frozenset()  # seed indices whose fetched alive flag is False
        self.bar = None
        self.compiled = False  # whether a piece was fetched: the first one's time is mostly compilation
        if progress:
            self.bar = tqdm(total=steps, initial=start, desc=f"train {run_id[:8]}", unit="step", leave=False)

    def _fetch(self, kind: str, step: int, n: int, outputs: Any) -> None:
        outputs = _to_host(outputs)
        if kind == "plain":
            self.rec.plain(step, n, outputs[0])
        elif kind == "probe":
            self.rec.step(step, outputs[0])
            self.rec.probes(step, outputs[1])
        else:
            self.rec.val[step] = np.asarray(outputs[0])
        if kind != "eval":
            alive = np.asarray(outputs[-1])  # the seeds' alive flags
            self.all_diverged = not bool(np.any(alive))
            self.dead = frozenset(int(i) for i in np.flatnonzero(~alive))
            if self.bar is not None:
                self.bar.update(n)
                if not self.compiled:
                    restart_rate(self.bar)
                    self.compiled = True

    def dispatch(self, kind: str, step: int, n: int, outputs: Any) -> None:
        """Queue a piece ("plain" | "probe" | "eval") covering `n` steps from `step`."""
        self.pending.append((kind, step, n, outputs))
        while len(self.pending) > 1:
            self._fetch(*self.pending.pop(0))

    def flush(self) -> None:
        while self.pending:
            self._fetch(*self.pending.pop(0))

    def close(self) -> None:
        self.flush()
        if self.bar is not None:
            self.bar.close()


def _to_host(tree: Any) -> Any:
    """Numpy copies of (possibly sharded) device arrays; across hosts, gathered from every process
    (a lost process: distributed.PeerLost)."""
    return distributed.gather(tree)


def _writer() -> bool:
    """Only one process writes the store's files (every process takes part in orbax checkpoints)."""
    return distributed.writer()


def _after_divergence(frame: pd.DataFrame, diverged: dict[int, int | None]) -> pd.DataFrame:
    """Drop each diverged seed's rows after its divergence step (the step itself is the evidence)."""
    never = np.iinfo(np.int64).max
    limit = frame["seed"].map(lambda s: never if diverged.get(int(s)) is None else diverged[int(s)])
    return frame[frame["step"].to_numpy() <= limit.to_numpy(np.int64)].reset_index(drop=True)


def _sort(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def train(
    cfg: TrainConfig,
    out: Path | str | None = None,
    *,
    plan: ExecutionPlan | None = None,
    devices: list | None = None,
    progress: bool = False,
    vmap_seeds: bool | None = None,
    streams: int | None = None,
    wait: bool = True,
) -> TrainResult:
    """Train every seed of `cfg` as `plan` says (default: this backend's, analysis.execution): on a
    CPU each seed in a program of its own, one per core at once; elsewhere all seeds in one vmapped
    program, the seed axis sharded over `devices` (analysis.train.seeds).

    Args:
        cfg: the run (analysis.train.config.TrainConfig).
        out: a store folder; the run goes to out/<run_id>/. A finished run there is read back
            (TrainResult.skipped), an unfinished one resumes from its last checkpoint. None = in memory.
        devices: devices to shard vmapped seeds over (default: all; the largest count that divides
            the number of seeds is used). Giving them chooses vmapped seeds.
        plan: how the model runs (analysis.execution.ExecutionPlan); its `compute_dtype` is part of
            the run's identity. A plan given decides the seeds' programs (`plan.seed_programs`).
        progress: show a tqdm bar over the steps.
        vmap_seeds: True: seeds vmapped together; False: a program per seed (both override
            `plan.seed_programs`); None without a plan: the platform's default (above), or, resuming an
            unfinished run, the way it started (so it resumes to the uninterrupted run's numbers). Not
            part of the run's identity: the two agree to float rounding, and a finished run in `out` is
            read back whichever way it was computed (`info["seed_programs"]` records how).
        streams: per-seed programs run at once on threads (default: `plan.streams`, else
            analysis.runtime.default_streams). Changes no number.
        wait: when another live process computes this run in `out` (its claim, analysis.train.store):
            wait for it and read its result back (True), or raise store.RunClaimed (False).

    A config too large for the memory this process may use is refused before compute
    (analysis.memory.TooLarge); a run that cannot be written (read-only store) is an OSError before
    compute; a damaged finished run is moved aside and computed again (store.claim_run).

    Bad input (task too large for the model, unreadable corpus, ...) raises ValueError before any
    compute and before anything in `out` is touched.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train expects a TrainConfig, got {type(cfg).__name__}")
    if plan is not None and not isinstance(plan, ExecutionPlan):
        raise TypeError(f"plan must be an analysis.execution.ExecutionPlan, got {type(plan).__name__}")
    chosen = vmap_seeds if vmap_seeds is not None or plan is None else plan.seed_programs == "vmapped"
    execution = default_plan() if plan is None else plan
    execution.check_model(cfg.model.dtype)
    mode = choose_mode(len(cfg.seeds), devices, chosen)
    if streams is not None and (not isinstance(streams, int) or isinstance(streams, bool) or streams < 1):
        raise ValueError(f"streams must be an integer >= 1, got {streams!r}")
    streams = execution.streams if streams is None else streams
    data = prepare(cfg.task, cfg.model)
    run_id = store.config_hash(cfg, data.fingerprint, numerics=execution.numerics_key())
    folder = None if out is None else Path(out) / run_id
    if folder is not None and store.is_finished(folder) and store.damage(folder) is None:
        store.remove_scaffolding(folder)  # left by a kill between run.json and its cleanup
        return read_result(folder)
    check_train_memory(cfg, mode, streams=streams, devices=devices, plan=execution)
    compute = lambda: _compute(cfg, data, execution, chosen, mode, run_id, folder, devices, progress, streams)
    if folder is None or jax.process_count() > 1:  # several hosts compute every run together: no claims
        return compute()
    with store.claim_run(folder, wait=wait) as claim:  # one writer per run, however many share the store
        if claim is None:  # finished (by another writer) meanwhile
            store.remove_scaffolding(folder)
            return read_result(folder)
        return compute()


def _compute(
    cfg: TrainConfig,
    data: Any,
    execution: ExecutionPlan,
    chosen: bool | None,
    mode: str,
    run_id: str,
    folder: Path | None,
    devices: list | None,
    progress: bool,
    streams: int | None,
) -> TrainResult:
    """The run itself, after `train`'s checks (with a folder, the caller holds its claim). `chosen`:
    the seed mode the caller asked for (None: `mode` is the default, and a resumed run keeps its own)."""
    started = time.perf_counter()
    started_as = _started_mode(folder)
    resumable = started_as == "vmapped" or (started_as == "per_seed" and jax.process_count() == 1)
    if resumable and chosen is None and devices is None and len(cfg.seeds) > 1:
        mode = started_as  # a resumed run goes on as it started: its numbers are the uninterrupted run's
    plan = Plan.of(cfg, with_checkpoints=folder is not None)
    prog = program(cfg, data, execution)
    shardings = seed_sharding(len(cfg.seeds), devices) if mode == "vmapped" else None
    n_devices = 1 if shardings is None else shardings[0].mesh.devices.size
    if shardings is None:  # one device, committed (as restored checkpoints are), so both share one compile
        one = jax.sharding.SingleDeviceSharding((devices or jax.devices())[0])
        shardings = (one, one)
    put = lambda x, i: jax.device_put(x, shardings[i])
    if mode == "vmapped":
        ex = Vmapped(put(jnp.asarray(cfg.seeds, jnp.uint32), 0))
    else:
        one_each = [put(jnp.asarray([s], jnp.uint32), 0) for s in cfg.seeds]
        ex = PerSeed(one_each, default_streams() if streams is None else streams)
    arrays = put(data.arrays, 1)
    rt = put(Runtime.of(cfg), 1)
    rec = _Recorder(cfg, run_id)

    start = 0
    if folder is not None:
        if _writer():
            store.remove_leftovers(folder)
        saved = checkpoint.steps(folder)
        if _writer():  # how the checkpointed states were computed: what a resume continues by default
            store.write_started(
                folder,
                {
                    "run_id": run_id,
                    "config": to_dict(cfg),
                    "task_info": data.info,
                    "seed_programs": started_as if saved and started_as else mode,
                },
            )
        if saved:
            start = saved[-1]
            _, abstract = abstract_states(cfg, shardings[0])
            states = ex.split(checkpoint.restore(folder, start, abstract))
            curves, probes = store.read_partial(folder, before=start)
            _replay(rec, curves, probes)
    if start == 0:
        states = ex.init(prog.init)

    pipe = _Pipeline(rec, cfg.steps, start, progress, run_id)
    T = cfg.steps
    for a, b in zip(plan.boundaries, (*plan.boundaries[1:], None)):
        if a < start:
            continue
        if pipe.all_diverged:
            break
        if a in plan.evals:
            pipe.dispatch("eval", a, 0, (ex.evaluate(prog.evaluate, states, arrays, rt, dead=pipe.dead),))
        if a in plan.checkpoints and a > start and folder is not None:
            pipe.flush()  # the partial rows must hold every step before the checkpoint
            if _writer():
                store.write_partial(folder, rec.curves(), _concat_probes(rec.probe_frames), a)
            with distributed.peer_loss_named(f"saving the checkpoint of step {a}"):  # orbax syncs the processes
                checkpoint.save(folder, a, ex.stacked(states))
        s = a
        if a in plan.probes:
            new, metrics, result = ex.step(prog.probed(plan.probes[a]), states, a, arrays, rt, dead=pipe.dead)
            pipe.dispatch("probe", a, int(a < T), (metrics, result, ex.alive(new)))
            states = new if a < T else states  # the final probe measures the trained model; no update
            s += 1
        if b is None:
            break
        while s < b:
            n = min(MAX_CHUNK, b - s)
            states, metrics = ex.step(prog.plain, states, s, n, arrays, rt, dead=pipe.dead)
            pipe.dispatch("plain", s, n, (metrics, ex.alive(states)))
            s += n
    pipe.close()

    diverged_at = np.asarray(_to_host(ex.diverged_at(states)))
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
        "stopped_early": pipe.all_diverged,
        "devices": n_devices,
        "seed_programs": mode,  # how the seeds were computed: information, not part of the run's id
        "streams": ex.streams,
        "execution": execution.replace(seed_programs=mode, streams=ex.streams).to_dict(),
    }
    if start and started_as not in (None, mode):
        info["seed_programs_before_resume"] = started_as
    result = TrainResult(cfg, run_id, status, diverged, curves, probes, info, folder)
    if folder is not None and _writer():
        store.write_finished(folder, curves, probes, _meta(result))
    return result


def _started_mode(folder: Path | None) -> str | None:
    """How the seeds of an unfinished run in `folder` were computed when it started (its started.json),
    None for a new run."""
    if folder is None or not (folder / store.STARTED).is_file():
        return None
    return store.read_meta(folder).get("seed_programs")


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
    return TrainResult(
        cfg, meta["run_id"], status, diverged, curves, probes, meta.get("info", {}), folder, skipped=True
    )
