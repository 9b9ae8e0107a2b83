"""Python API for notebooks and scripts: probe models at initialization over many seeds.

from analysis import probe_at_init
df = probe_at_init(cfg, seeds=range(8), batch_size=8, seq_len=64, probes=("act_grad_norm", "cka"))
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from analysis.execution import ExecutionPlan, default_plan
from analysis.probe.loss import check_batch, random_batch
from analysis.probe.probes import CHEAP_PROBES, ProbeConfig, probe_program
from analysis.probe.tidy import to_frame
from analysis.runtime import default_streams, ensure_compilation_cache, run_on_threads
from models import ModelConfig, Transformer, init_state


def _seed_list(seeds: Iterable[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty; give at least one seed, e.g. range(4)")
    bad = [s for s in seeds if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0]
    if bad:
        raise ValueError(f"seeds must be non-negative integers, got {bad}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds contain duplicates: {seeds}")
    return [int(s) for s in seeds]


def batch_key(seed_key: jax.Array) -> jax.Array:
    """Key of the random batch `probe_at_init` draws for a seed (to rebuild that batch elsewhere)."""
    return jax.random.fold_in(seed_key, 1)


def probe_key(seed_key: jax.Array) -> jax.Array:
    """Key of the probes' own randomness for a seed (CKA null shuffles, output-change perturbation).

    One derivation for `probe_at_init` and `probe_model`, so both give the same numbers for the
    same seed, model and batch.
    """
    return jax.random.fold_in(seed_key, 2)


def study_plan(plan: ExecutionPlan | None) -> ExecutionPlan:
    """`plan`, or by default this backend's plan for a program compiled to run once (every stack
    scanned: analysis.execution.ExecutionPlan.one_shot)."""
    if plan is None:
        return default_plan().one_shot()
    if not isinstance(plan, ExecutionPlan):
        raise TypeError(f"plan must be an analysis.execution.ExecutionPlan, got {type(plan).__name__}")
    return plan


@functools.lru_cache(maxsize=64)
def _compiled(
    cfg: ModelConfig,
    plan: ExecutionPlan,
    pcfg: ProbeConfig,
    batch_size: int,
    seq_len: int,
    given_batch: bool,
    chunk: int,
):
    """The jitted study of seeds. `chunk` > 1: a group of seeds, (seeds (S,), batch) -> results with a
    leading (S,) axis, `chunk` seeds vmapped together at a time (lax.map over the rest). `chunk` == 1:
    one seed, (seed (), batch) -> its results, no seed axis.

    Why one seed per call when seeds are not vmapped: a loop over a group of seeds made the program
    depend on the group's size (each seed count and stream count compiled a program of its own) and
    added a stacking update and loop copies per result to compile; the seed's numbers are the same
    bit for bit (tests/analysis/probe/test_study_programs.py)."""
    ops = plan.model_ops()

    def one(seed, batch):
        key = jax.random.key(seed)
        graphdef, state = init_state(cfg, key, ops)
        if not given_batch:
            batch = random_batch(cfg, batch_key(key), batch_size, seq_len)
        return probe_program(graphdef, state, batch, cfg, pcfg, probe_key(key))

    if chunk == 1:
        return plan.jit(one)
    return plan.jit(lambda seeds, batch: jax.lax.map(lambda s: one(s, batch), seeds, batch_size=chunk))


def _seed_groups(seeds: list[int], streams: int) -> list[np.ndarray]:
    """`seeds` split into at most `streams` equal groups (one program shape, one compile), the last
    padded with repeats of its final seed (whose results are dropped); never a group of padding only."""
    size = -(-len(seeds) // streams)
    count = -(-len(seeds) // size)
    padded = seeds + [seeds[-1]] * (size * count - len(seeds))
    return [np.asarray(padded[i * size : (i + 1) * size], np.uint32) for i in range(count)]  # no conversion program


def probe_at_init(
    cfg: ModelConfig,
    seeds: Iterable[int] = range(4),
    batch_size: int = 8,
    seq_len: int = 32,
    probes: Iterable[str] = CHEAP_PROBES,
    *,
    batch: Mapping[str, jax.Array] | None = None,
    probe_config: ProbeConfig | None = None,
    run: str = "",
    plan: ExecutionPlan | None = None,
    seed_chunk: int | None = None,
    streams: int | None = None,
) -> pd.DataFrame:
    """Probe freshly initialized models of `cfg`, one per seed, as a tidy DataFrame (analysis.probe.tidy).

    Seeds are compiled into one program (model init and Admin profiling inside), run as `plan` says
    (default: this backend's, every stack scanned; analysis.execution): `plan.seed_programs`
    "vmapped" vmaps a group's seeds together, "per_seed" computes one at a time, a program of one
    seed called once per seed, the same program whatever the number of seeds (`seed_chunk` seeds
    vmapped at a time overrides both), and `streams` groups of seeds (default: `plan.streams`) run
    at once, each on its own thread. Each seed's numbers do not depend on `streams` (bit for bit);
    `seed_chunk` changes them only by float rounding. Seed s is the model of
    `build_model(cfg, s, ops=plan.model_ops())`. The batch is random tokens drawn from each seed
    unless `batch` is given (then the same batch for every seed). Compiled programs are kept in the
    persistent compilation cache unless this process chose otherwise
    (analysis.runtime.ensure_compilation_cache).
    """
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    seeds = _seed_list(seeds)
    plan = study_plan(plan)
    plan.check_model(cfg.dtype)
    pcfg = (
        probe_config
        if probe_config is not None
        else ProbeConfig(probes=probes if isinstance(probes, str) else tuple(probes))
    )
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if batch is None and seq_len > cfg.max_len:
        raise ValueError(f"seq_len={seq_len} > max_len={cfg.max_len}")
    for name, value in (("seed_chunk", seed_chunk), ("streams", streams)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1 or None (the platform's default), got {value!r}")
    if batch is not None:
        check_batch(cfg, batch)
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
    ensure_compilation_cache()
    shape = (0, 0) if batch is not None else (batch_size, seq_len)  # unused with a given batch: no recompiles
    streams = streams if streams is not None else plan.streams if plan.streams is not None else default_streams()
    groups = _seed_groups(seeds, min(streams, len(seeds)))
    vmapped = len(groups[0]) if plan.seed_programs == "vmapped" else 1
    chunk = min(vmapped if seed_chunk is None else seed_chunk, len(groups[0]))
    model_plan = plan.replace(seed_programs="per_seed", streams=None)  # `chunk` and the groups say the rest
    fn = _compiled(cfg, model_plan, pcfg, *shape, batch is not None, chunk)
    if chunk == 1:  # one program per seed, the seeds shared out over the streams as they finish
        calls = [(np.uint32(seed), batch) for seed in seeds]  # a host scalar: no conversion program
        parts = run_on_threads(fn, calls, min(streams, len(seeds)), post=jax.device_get)
        result = jax.tree.map(lambda *a: np.stack(a), *parts)
    else:
        parts = run_on_threads(fn, [(group, batch) for group in groups], len(groups), post=jax.device_get)
        result = jax.tree.map(lambda *a: np.concatenate(a)[: len(seeds)], *parts)
    return to_frame(result, cfg, seeds, run=run)


@functools.lru_cache(maxsize=16)
def _model_program(cfg: ModelConfig, pcfg: ProbeConfig, plan: ExecutionPlan):
    """probe_model's jitted program for one configuration: (state, batch, probe key) -> results.

    The probe key is an argument, not a constant of the program, so every seed (and every later call,
    in this process or, through the persistent cache, another one) runs the same compiled program,
    and the key's random draws are computed as in probe_at_init's programs, which take seeds as
    arguments too."""
    graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0), plan.model_ops())))[0]
    return plan.jit(lambda state, batch, key: probe_program(graphdef, state, batch, cfg, pcfg, key))


def probe_model(
    model: nnx.Module,
    batch: Mapping[str, jax.Array],
    probes: Iterable[str] = CHEAP_PROBES,
    *,
    seed: int = 0,
    run: str = "",
    plan: ExecutionPlan | None = None,
) -> pd.DataFrame:
    """Probe one existing model (e.g. during training) on `batch`; rows carry `seed`.

    The model's parameters run as `plan` says (default: as in `probe_at_init`), whatever ops it was
    built with. `seed` also keys the probes' randomness, as in `probe_at_init`, so a model built
    with `build_model(cfg, s)` probed here with `seed=s` gives the numbers `probe_at_init` gives for s
    (up to float rounding; exactly with the same plan's ops where the init profiles nothing: Admin's
    ω profile, computed in build_model's own program, can differ in last bits).
    """
    cfg = model.cfg
    check_batch(cfg, batch)
    plan = study_plan(plan)
    plan.check_model(cfg.dtype)
    pcfg = ProbeConfig(probes=probes if isinstance(probes, str) else tuple(probes))
    _, state = nnx.split(model)
    ensure_compilation_cache()
    fn = _model_program(cfg, pcfg, plan)
    key = probe_key(jax.random.key(seed))
    result = jax.device_get(fn(state, {k: jnp.asarray(v) for k, v in batch.items()}, key))
    result = jax.tree.map(lambda a: np.asarray(a)[None], result)
    return to_frame(result, cfg, [seed], run=run)
