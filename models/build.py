"""Model construction: `build_model` (a ready nnx.Module) and `init_state` (pure, vmappable over seeds).

Admin's ω is profiled here (Liu et al. 2020, Transformer-Clinic `--init-type adaptive-profiling`):
with a running r₀ = 1 per stack, sublayer i takes ω_i := r_{i−1} and sets
r_i := sqrt(Var(ω_i·x_{i−1}) + Var(f_i(x_{i−1}))), variances over all elements of a batch at init,
so ω_i² = 1 + Σ_{j<i} Var f_j when the LN outputs have unit variance. ω_i depends on ω_{<i} through the
activations, so it is the fixed point of "forward pass, then recompute every ω"; that map fixes one more
sublayer per application, and applying it n_sub (all sublayers of all stacks) times reaches it exactly.
The profiling batch is random tokens drawn from the model's own seed.
"""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from models.block import sublayer_input_site
from models.config import ModelConfig
from models.ops import ModelOps
from models.placements import PLACEMENTS
from models.spec import StackSpec
from models.transformer import Transformer

PROFILE_BATCH = 8
PROFILE_LENGTH = 32


def _profiled_stacks(cfg: ModelConfig) -> tuple[StackSpec, ...]:
    if cfg.admin_init != "profile":
        return ()
    return tuple(spec for spec in cfg.stacks() if PLACEMENTS[spec.placement].profiled)


def _omegas_from_sites(spec: StackSpec, sites: dict, omegas: dict) -> dict:
    """One application of the profiling map: new ω (L, len(kinds)) for one stack."""
    layer_sites = sites["layers"]
    var = lambda a: jnp.var(a.astype(jnp.float32), axis=tuple(range(1, a.ndim)))  # (L,) over all elements
    kinds = spec.sublayers
    var_in = jnp.stack([var(layer_sites[sublayer_input_site(kinds, k)]) for k in kinds], axis=1).reshape(-1)
    var_out = jnp.stack([var(layer_sites[f"{k}_out"]) for k in kinds], axis=1).reshape(-1)
    omega = jnp.stack([omegas[k] for k in kinds], axis=1).reshape(-1)  # current ω_i, sublayer order

    # r_i² = ω_i²·Var(x_{i−1}) + Var(f_i); the next ω is r: ω_{i+1} = r_i, ω_1 = r_0 = 1.
    r_squared = omega**2 * var_in + var_out
    new = jnp.concatenate([jnp.ones((1,), r_squared.dtype), jnp.sqrt(r_squared[:-1])])
    new = new.reshape(spec.layers, len(kinds))
    return {k: new[:, i] for i, k in enumerate(kinds)}


def _omega_node(state: nnx.State, spec: StackSpec) -> nnx.State:
    return state["stacks"][spec.name]["layers"]["extra"]


def _get_omegas(state: nnx.State, spec: StackSpec) -> dict:
    node = _omega_node(state, spec)
    return {k: node[k]["omega"][...][:, 0].astype(jnp.float32) for k in spec.sublayers}


def _with_omegas(state: nnx.State, specs: tuple[StackSpec, ...], omegas: dict) -> nnx.State:
    """A copy of `state` whose ω (every profiled stack) are set from `omegas` ({stack: {kind: (L,)}})."""
    state = jax.tree.map(lambda a: a, state)  # shallow copy of the tree; arrays are immutable
    for spec in specs:
        node = _omega_node(state, spec)
        for k in spec.sublayers:
            old = node[k]["omega"][...]
            node[k]["omega"] = nnx.Param(jnp.broadcast_to(omegas[spec.name][k][:, None], old.shape).astype(old.dtype))
    return state


def profile_batch(cfg: ModelConfig, key: jax.Array) -> tuple[jax.Array, ...]:
    """Random token inputs of the model's arch (the papers' init analyses use random tokens)."""
    length = min(cfg.max_len, PROFILE_LENGTH)
    keys = jax.random.split(key, 2)
    draw = lambda k: jax.random.randint(k, (PROFILE_BATCH, length), 0, cfg.vocab)
    return (draw(keys[0]), draw(keys[1])) if cfg.arch == "encdec" else (draw(keys[0]),)


def profile_admin(model: Transformer, inputs: tuple[jax.Array, ...]) -> None:
    """Set every profiled stack's ω in place to the fixed point of Admin's profiling on `inputs`."""
    specs = _profiled_stacks(model.cfg)
    if not specs:
        return
    graphdef, state = nnx.split(model)
    iterations = sum(spec.layers * len(spec.sublayers) for spec in specs)

    def apply_map(_, omegas):
        sites = nnx.merge(graphdef, _with_omegas(state, specs, omegas)).forward(*inputs).sites
        return {spec.name: _omegas_from_sites(spec, sites[spec.name], omegas[spec.name]) for spec in specs}

    start = {spec.name: _get_omegas(state, spec) for spec in specs}
    omegas = jax.lax.fori_loop(0, iterations, apply_map, start)
    nnx.update(model, _with_omegas(state, specs, omegas))


def init_state(cfg: ModelConfig, seed: int | jax.Array, ops: ModelOps = ModelOps()) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, state) of a freshly initialized model run with `ops` (models.ops; Admin's profiling
    runs with them too); pure, so it can be jitted and vmapped over seeds."""
    is_key = isinstance(seed, jax.Array) and jax.dtypes.issubdtype(seed.dtype, jax.dtypes.prng_key)
    key = seed if is_key else jax.random.key(seed)
    init_key, profile_key = jax.random.split(key)
    # Non-partitionable threefry: the same generator, whose per-shape kernels XLA's CPU backend
    # compiles faster; the init's compile dominated the probe program's.
    with jax.threefry_partitionable(False):
        model = Transformer(cfg, nnx.Rngs(params=init_key), ops)
    profile_admin(model, profile_batch(cfg, profile_key))
    return nnx.split(model)


def build_model(cfg: ModelConfig, seed: int = 0, ops: ModelOps = ModelOps()) -> Transformer:
    """A freshly initialized model (an nnx.Module) for `cfg`, run with `ops`; the numbers of
    `init_state(cfg, seed, ops)`."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_model expects a ModelConfig, got {type(cfg).__name__}")
    graphdef, _ = nnx.eval_shape(lambda: nnx.split(Transformer(cfg, nnx.Rngs(0), ops)))
    state = jax.jit(lambda s: init_state(cfg, s, ops)[1])(jnp.asarray(seed, jnp.uint32))
    return nnx.merge(graphdef, state)
