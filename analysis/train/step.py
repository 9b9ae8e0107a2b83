"""The compiled training program: init, plain-step chunks, probed steps and evaluation, seeds vmapped
(over all of a run's seeds, or over one seed per call: analysis.train.seeds), the model run with an
execution plan's ops (analysis.execution).

Per seed, one update at step s (0-based) is

    batch_s = task batch from key (seed, s)          drawn inside the program, no host round trip
    ℒ_s, g_s = value_and_grad(ℒ)(θ_s, batch_s)       or, on probe steps, probe_program_with_grads:
                                                     the probes and g_s from ONE forward/backward
    θ_{s+1} = θ_s + AdamW(clip(g_s))                 analysis.train.optim
    θ_{s+1} ← P(θ_{s+1})                             only where a placement declares a post-update step
                                                     P (models.transformer.after_update; nGPT's
                                                     renormalization), inside the same compiled step
    recorded: ℒ_s, η_s, ‖g_s‖ (before clipping), ‖θ_{s+1} − θ_s‖/‖θ_s‖

A seed diverges at the first step whose loss or gradient norm is NaN/Inf or whose loss exceeds the
ceiling; from then on its parameters are frozen (`alive` false, `diverged_at` = s) while the other
seeds go on.

The steps between two probe steps run as one `lax.fori_loop` (one dispatch per chunk); its trip count
is a runtime argument, so every chunk length shares one compiled program. All functions take a
leading seed axis; shard that axis (`seed_sharding`) and jit partitions the vmapped program over
devices (jit + vmap over sharded inputs; shard_map would sum the gradients of device-invariant
values over devices, silently wrong per-seed numbers).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from analysis.execution import ExecutionPlan
from analysis.execution.ops import vmap_seeds
from analysis.probe.api import probe_key
from analysis.probe.loss import loss_from_logits, model_inputs
from analysis.probe.probes import ProbeConfig, probe_program_with_grads
from analysis.train.config import TrainConfig
from analysis.train.optim import Hyper, adamw_updates, make_optimizer
from analysis.train.tasks import TaskData
from models import ModelOps, Transformer, init_state
from models.transformer import after_update

METRICS: tuple[str, ...] = ("loss", "lr", "grad_norm", "update_ratio")
# Plain steps per dispatch at most. The chunk's metric buffers always have this size (the trip count
# is a runtime argument), so every run of a (model, task, optimizer kind) shares one compiled chunk;
# it also bounds how late an all-diverged run notices that it can stop.
MAX_CHUNK = 256


class TrainState(NamedTuple):
    """One seed's training state (a leading seed axis when vmapped)."""

    params: nnx.State
    opt: Any  # optax state
    alive: jax.Array  # () bool
    diverged_at: jax.Array  # () int32; -1 while alive


def batch_key(seed: jax.Array, step: jax.Array) -> jax.Array:
    """Key of the training batch of (model seed, step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 3), step)


def val_key(data_seed: int, index: int | jax.Array) -> jax.Array:
    """Key of validation batch `index`: fixed by the task's data seed, the same for every model seed."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(data_seed), 1), index)


def graphdef_of(cfg: TrainConfig, ops: ModelOps = ModelOps()) -> nnx.GraphDef:
    """The graph definition of the model run with `ops` (no arrays are created)."""
    return nnx.eval_shape(lambda: nnx.split(Transformer(cfg.model, nnx.Rngs(0), ops)))[0]


def init_one(
    cfg: TrainConfig, optimizer: optax.GradientTransformation, seed: jax.Array, ops: ModelOps = ModelOps()
) -> TrainState:
    """The state of one seed before step 0: build_model(cfg.model, seed, ops)'s parameters, AdamW's zeros."""
    _, params = init_state(cfg.model, jax.random.key(seed), ops)
    with jax.numpy_dtype_promotion("standard"):  # optax's count arithmetic (see optim.py)
        opt_state = optimizer.init(params)
    return TrainState(params, opt_state, jnp.ones((), bool), jnp.full((), -1, jnp.int32))


def abstract_states(cfg: TrainConfig, sharding: jax.sharding.Sharding | None = None) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef with models.ops' plain ops, the seed-stacked TrainState as ShapeDtypeStructs) of
    `cfg`, e.g. to restore a checkpoint."""
    optimizer = make_optimizer(cfg.optim, cfg.model)
    seeds = jax.ShapeDtypeStruct((len(cfg.seeds),), jnp.uint32)
    abstract = jax.eval_shape(jax.vmap(lambda s: init_one(cfg, optimizer, s)), seeds)
    if sharding is not None:
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract)
    return graphdef_of(cfg), abstract


def _global_norm(tree: Any) -> jax.Array:
    leaves = [jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(leaves))


class Runtime(NamedTuple):
    """Numbers of a run passed to the compiled functions as arguments (float32/int32 scalars), so runs
    that differ only in them share one compiled program: learning rate, warm-up, length, ceiling,
    validation batches."""

    hyper: Hyper
    ceiling: jax.Array
    eval_batches: jax.Array

    @classmethod
    def of(cls, cfg: TrainConfig) -> Runtime:
        return cls(
            Hyper.of(cfg.optim, cfg.steps),
            jnp.asarray(cfg.ceiling, jnp.float32),
            jnp.asarray(cfg.eval_batches, jnp.int32),
        )


class Program:
    """The jitted functions of one (model, task, optimizer kind) run as `plan` says; build with
    `program(cfg, data, plan)`.

    Everything in `Runtime` is an argument, not a constant: learning-rate, warm-up, run-length and
    ceiling sweeps compile once.
    """

    def __init__(self, cfg: TrainConfig, data: TaskData, plan: ExecutionPlan, chunk: int = MAX_CHUNK):
        plan.check_model(cfg.model.dtype)
        self.cfg, self.data, self.plan, self.chunk = cfg, data, plan, chunk
        self.model_cfg = cfg.model
        self.optimizer = make_optimizer(cfg.optim, cfg.model)
        self.ops = plan.model_ops()
        self.graphdef = graphdef_of(cfg, self.ops)
        self.after_update = after_update(cfg.model)  # None for most placements: the plain update
        self.init = plan.jit(vmap_seeds(self._init_one))
        self.plain = plan.jit(vmap_seeds(self._plain_one, in_axes=(0, 0, None, None, None, None)))
        self.evaluate = plan.jit(vmap_seeds(self._eval_one, in_axes=(0, None, None)))
        self._probed: dict[tuple[str, ...], Any] = {}

    # -- per seed ------------------------------------------------------------------------------
    def _init_one(self, seed: jax.Array) -> TrainState:
        return init_one(self.cfg, self.optimizer, seed, self.ops)

    def loss(self, params: nnx.State, batch: dict, dropout_key: jax.Array | None = None) -> jax.Array:
        model = nnx.merge(self.graphdef, params)
        inputs = model_inputs(self.model_cfg, batch)
        logits = model.forward(*inputs, record=False, dropout_key=dropout_key).logits
        return loss_from_logits(self.model_cfg, logits, batch)

    def _update(self, state: TrainState, loss: jax.Array, grads: Any, step: jax.Array, rt: Runtime):
        grad_norm = _global_norm(grads)
        bad = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm)) | (loss > rt.ceiling)
        updates, opt_state, lr = adamw_updates(
            self.optimizer, self.cfg.optim.schedule, rt.hyper, step, grads, state.opt, state.params
        )
        params = optax.apply_updates(state.params, updates)
        step_change = updates
        if self.after_update is not None:
            params = self.after_update(params)
            step_change = jax.tree.map(jnp.subtract, params, state.params)  # θ_{s+1} − θ_s after P
        keep = state.alive & ~bad
        choose = lambda new, old: jnp.where(keep, new, old)
        new = TrainState(
            jax.tree.map(choose, params, state.params),
            jax.tree.map(choose, opt_state, state.opt),
            keep,
            jnp.where(state.alive & bad, step, state.diverged_at).astype(jnp.int32),
        )
        metrics = {
            "loss": loss.astype(jnp.float32),
            "lr": lr,
            "grad_norm": grad_norm,
            "update_ratio": _global_norm(step_change) / _global_norm(state.params),
        }
        return new, metrics

    def _plain_one(self, state: TrainState, seed: jax.Array, start: jax.Array, n: jax.Array, arrays: dict, rt: Runtime):
        dropout = self.model_cfg.dropout > 0

        def body(i, carry):
            state, buffers = carry
            step = start + i
            batch = self.data.batch(arrays, batch_key(seed, step))
            dkey = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 4), step) if dropout else None
            loss, grads = jax.value_and_grad(self.loss)(state.params, batch, dkey)
            state, metrics = self._update(state, loss, grads, step, rt)
            return state, {k: buffers[k].at[i].set(metrics[k]) for k in METRICS}

        buffers = {k: jnp.full((self.chunk,), jnp.nan, jnp.float32) for k in METRICS}
        return jax.lax.fori_loop(0, n, body, (state, buffers))

    def _probe_one(
        self, state: TrainState, seed: jax.Array, step: jax.Array, arrays: dict, rt: Runtime, pcfg: ProbeConfig
    ):
        batch = self.data.batch(arrays, batch_key(seed, step))
        key = jax.random.fold_in(probe_key(jax.random.key(seed)), step)
        result, grads = probe_program_with_grads(self.graphdef, state.params, batch, self.model_cfg, pcfg, key)
        state, metrics = self._update(state, result["loss"], grads, step, rt)
        return state, metrics, result

    def _eval_one(self, params: nnx.State, arrays: dict, rt: Runtime) -> jax.Array:
        def body(i, total):
            batch = self.data.batch(arrays, val_key(self.cfg.task.data_seed, i), split="val")
            return total + self.loss(params, batch)

        total = jax.lax.fori_loop(0, rt.eval_batches, body, jnp.zeros((), jnp.float32))
        return total / rt.eval_batches.astype(jnp.float32)

    # -- vmapped over seeds ----------------------------------------------------------------------
    def probed(self, probes: tuple[str, ...]):
        """The jitted probed step for one probe set:
        (states, seeds, step, arrays, runtime) -> (states, metrics, result)."""
        if probes not in self._probed:
            one = functools.partial(self._probe_one, pcfg=self.cfg.probe_config(probes))
            self._probed[probes] = self.plan.jit(vmap_seeds(one, in_axes=(0, 0, None, None, None)))
        return self._probed[probes]


PROGRAMS_KEPT = 16  # Programs cached at most (the least recently used is dropped)
_PROGRAMS: dict[tuple, Program] = {}  # (program key, data) -> Program; insertion order = recency


def program(cfg: TrainConfig, data: TaskData, plan: ExecutionPlan) -> Program:
    """The Program of `cfg` on prepared `data`, run as `plan` says (cached; the plan's seed
    programs and streams are the loop's, so plans that differ only there share it).

    Configs with one `cfg.program_key()` share it and compile once: they differ only in runtime
    fields (analysis.train.fields: the seeds, the Runtime numbers lr, warm-up, steps, ceiling, eval
    batches, and the host's probe/eval/checkpoint schedule), which no compiled function reads from
    `cfg` (a different number of seeds changes shapes, so jit retraces). The first config of a key
    builds the Program; the CKA settings stay in the key: they change the probed step's program.
    """
    # the plan's seed programs and streams are the host loop's: plans differing only there share a Program
    plan = plan.replace(seed_programs="vmapped", streams=None)
    key = (cfg.program_key(), data, plan)
    prog = _PROGRAMS.pop(key, None) or Program(cfg, data, plan)
    _PROGRAMS[key] = prog
    while len(_PROGRAMS) > PROGRAMS_KEPT:
        del _PROGRAMS[next(iter(_PROGRAMS))]
    return prog


def seed_sharding(
    n_seeds: int, devices: list | None = None
) -> tuple[jax.sharding.Sharding, jax.sharding.Sharding] | None:
    """(sharding of seed-leading arrays, replicated sharding) over the largest number of `devices`
    (default: all) that divides n_seeds; None on a single device."""
    devices = list(jax.devices() if devices is None else devices)
    used = max(d for d in range(1, len(devices) + 1) if n_seeds % d == 0)
    if used == 1:
        return None
    mesh = jax.sharding.Mesh(np.array(devices[:used]), ("seed",), axis_types=(jax.sharding.AxisType.Auto,))
    P = jax.sharding.PartitionSpec
    return jax.sharding.NamedSharding(mesh, P("seed")), jax.sharding.NamedSharding(mesh, P())
