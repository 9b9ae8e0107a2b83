"""The unrolled layer loop (`ModelConfig.unroll_layers`) computes what the scan computes.

Values and gradients (with respect to every parameter and to every probe site, through zero
perturbations) for every placement, Mix-LN's two segments, ResiDual's dual stream and the
encoder-decoder, all in one compiled program (see test_invariants' jit_apply); plus the switch
itself: below the threshold the program grows with depth, above it it does not.
"""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import PLACEMENTS, Transformer
from models.sites import zeros_like_sites
from models.stack import grad_barrier
from tests.models.test_invariants import (
    SAME_F32, TOKENS, build_eager, cfg_of, forward_jaxpr_size, inputs_of, jit_apply, jitter,
)  # fmt: skip

SCAN, UNROLL = 0, 64  # unroll_layers: always scan / unroll every stack here
# The stack paths the loop can take, in the fast tier: segments (mix), a second stream (residual),
# per-layer parameters, cross-attention memory and two stacks (admin encdec). The slow tier adds
# every other placement (the layer input of b2t, per-head norm slots of hybrid, ...) and encdec
# versions of mix and residual.
CASES = [("mix", "decoder"), ("residual", "decoder"), ("admin", "encdec")]
REST = ([(p, "decoder") for p in PLACEMENTS if p not in {"mix", "residual", "admin", "hybrid"}]
        + [("hybrid", "encoder"), ("mix", "encdec"), ("residual", "encdec")])  # fmt: skip


def _value_and_grads(model, tokens, cfg):
    """Logits, ∂(Σ w·logits)/∂θ and ∂/∂site for a fixed weighting w (a generic upstream gradient)."""
    graphdef, state = nnx.split(model)
    inputs = inputs_of(cfg, tokens)

    def f(state, perturb):
        out = nnx.merge(graphdef, state).forward(*inputs, perturb=perturb)
        weights = jnp.cos(jnp.arange(out.logits.size, dtype=jnp.float32)).reshape(out.logits.shape)
        return jnp.sum(out.logits * weights), out.logits

    shapes = jax.eval_shape(lambda s: nnx.merge(graphdef, s).forward(*inputs).sites, state)
    (_, logits), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(state, zeros_like_sites(shapes))
    return logits, grads


def check_unrolled_equals_scanned(cases: list[tuple[str, str]]) -> None:
    models, cfgs = [], []
    for placement, arch in cases:
        # mix at 4 layers: a Post-LN and a Pre-LN segment of 2 layers each
        cfg = cfg_of(placement, arch=arch, layers=4 if placement == "mix" else 2, unroll_layers=SCAN)
        scanned = jitter(build_eager(cfg))
        graphdef, state = nnx.split(scanned)
        unrolled_cfg = cfg.replace(unroll_layers=UNROLL)
        unrolled_graphdef = nnx.split(nnx.eval_shape(lambda c=unrolled_cfg: Transformer(c, nnx.Rngs(0))))[0]
        assert all(s.unroll for s in nnx.merge(unrolled_graphdef, state).stacks.values())
        assert not any(s.unroll for s in scanned.stacks.values())
        models += [scanned, nnx.merge(unrolled_graphdef, state)]  # the same parameters
        cfgs += [cfg, unrolled_cfg]
    results = jit_apply(models, lambda m, i, t: _value_and_grads(m, t, cfgs[i]), TOKENS,
                        labels=[f"{c.placement}/{c.arch}/unroll={c.unroll_layers}" for c in cfgs])  # fmt: skip
    assert_pairs_equal(cases, results)


def assert_pairs_equal(cases: list[tuple[str, str]], results: list) -> None:
    """results = [first_0, second_0, first_1, ...]: each case's two pytrees have the same structure
    and leaves equal to float32 rounding."""
    for (placement, arch), first, second in zip(cases, results[::2], results[1::2]):
        leaves_1, tree_1 = jax.tree_util.tree_flatten_with_path(first)
        leaves_2, tree_2 = jax.tree_util.tree_flatten_with_path(second)
        assert tree_1 == tree_2, (placement, arch)
        for (path, a), (_, b) in zip(leaves_1, leaves_2):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), **SAME_F32,
                                       err_msg=f"{placement}/{arch} {jax.tree_util.keystr(path)}")  # fmt: skip


def test_unrolled_equals_scanned_values_and_gradients():
    check_unrolled_equals_scanned(CASES)


@pytest.mark.slow
def test_unrolled_equals_scanned_every_other_placement():
    check_unrolled_equals_scanned(REST)


def test_grad_barrier_is_the_identity_with_identical_gradients():
    # The barrier changes what XLA may fuse, not the numbers: forward and backward are the identity.
    x = {"x": jnp.linspace(-1.0, 1.0, 6), "dual": jnp.arange(3.0)}
    f = lambda t: jnp.sum(jnp.sin(t["x"]) ** 2) + jnp.sum(t["dual"] ** 3)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), grad_barrier(x), x))
    g_plain, g_barrier = jax.grad(f)(x), jax.grad(lambda t: f(grad_barrier(t)))(x)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), g_plain, g_barrier))
    # forward-over-reverse (the Hessian probe) goes through it too
    hvp = jax.jvp(jax.grad(lambda t: f(grad_barrier(t))), (x,), (jax.tree.map(jnp.ones_like, x),))[1]
    np.testing.assert_allclose(np.asarray(hvp["dual"]), 6.0 * np.arange(3.0))


@pytest.mark.parametrize("placement", ["pre", "mix"])
def test_the_threshold_switches_between_loop_and_scan(placement):
    # At or below unroll_layers the program grows with depth (an unrolled loop); above, it is one scan
    # per segment and the same at every depth (compile time flat for deep stacks).
    size = lambda layers, threshold: forward_jaxpr_size(cfg_of(placement, layers=layers, unroll_layers=threshold))
    assert size(3, 4) > size(2, 4)
    assert size(5, 4) == size(12, 4)


@pytest.mark.parametrize("bias", [False, True])
def test_fused_projections_equal_separate_ones(bias):
    # One matmul with [W_Q | W_K | W_V] (and the biases concatenated) gives each projection's own
    # x W + b: same parameters, same numbers (float rounding only).
    from models.layers import Linear, fused_projections

    cfg = cfg_of("pre", bias=bias, d_model=8)
    rngs = nnx.Rngs(3)
    linears = tuple(Linear(8, 8, cfg, rngs) for _ in range(3))
    if bias:
        for i, lin in enumerate(linears):
            lin.bias[...] = jnp.full((8,), 0.1 * (i + 1), jnp.float32)
    x = jax.random.normal(jax.random.key(0), (2, 4, 8), jnp.float32)
    for group in (linears, linears[1:]):  # self-attention (q, k, v) and cross-attention (k, v)
        fused = fused_projections(group, x)
        assert len(fused) == len(group)
        for lin, y in zip(group, fused):
            np.testing.assert_allclose(np.asarray(y), np.asarray(lin(x)), **SAME_F32)
