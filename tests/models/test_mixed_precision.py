"""ModelConfig.compute_dtype="bfloat16": float32 parameters, norms and probes, bfloat16 matmul inputs
with float32 accumulation; the numbers agree with float32 within the tolerances below.

The mixed projection itself (`models.layers.matmul(x, w, "bfloat16")`) is checked against a float64
restatement of its contract: output and both gradients are products of bfloat16-rounded inputs (and
cotangent), accumulated without further rounding, also vmapped over seeds; and its compiled CPU backward contracts every
product's first operand on its last axis (the weight gradient's standard layout).
"""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.probe.loss import random_batch
from analysis.probe.probes import ProbeConfig, probe_program_with_grads
from models import ModelConfig, Transformer, init_state
from models.layers import matmul
from tests.models.test_projection import _contracted_lhs_axes

# bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per input); float32 accumulation
# keeps the sums' own rounding small. Observed at these shapes (decoder / encdec): loss 1.3e-4 /
# 2.6e-4 relative; the whole gradient (L2 over every parameter) 3.4e-2 / 1.1e-2 relative; probe
# values 7.7e-3 relative at most (param_grad_norm), 2.8e-3 absolute. Each tolerance ~3x that.
LOSS_RTOL = 1e-3
GRAD_RTOL = 0.1
PROBE_RTOL = 2.5e-2
PROBE_ATOL = 1e-2  # near-zero probe values (CKA null, small gradient norms) carry only the absolute error
PROBES = ("param_grad_norm", "act_grad_norm", "ln_jacobian_gain", "act_norm", "update_ratio", "cos_adjacent", "cka")


def _run(cfg: ModelConfig):
    _, state = init_state(cfg.replace(compute_dtype=None), 0)  # the same float32 parameters
    graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))[0]
    batch = random_batch(cfg, jax.random.key(1), 4, 16)
    fn = jax.jit(lambda s, b: probe_program_with_grads(graphdef, s, b, cfg, ProbeConfig(probes=PROBES), jax.random.key(2)))
    return fn(state, batch)


@pytest.mark.parametrize("arch", ["decoder", "encdec"])
def test_bfloat16_compute_matches_float32(arch):
    base = ModelConfig(arch=arch, placement="pre", layers=2, d_model=32, heads=4, d_ff=64, vocab=32, max_len=16)
    (r32, g32), (r16, g16) = _run(base), _run(base.replace(compute_dtype="bfloat16"))
    # everything the user sees stays float32: gradients (the optimizer's input) and probes
    assert {a.dtype for a in jax.tree.leaves((r16, g16))} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(float(r16["loss"]), float(r32["loss"]), rtol=LOSS_RTOL)
    flat = lambda tree: jnp.concatenate([a.reshape(-1) for a in jax.tree.leaves(tree)])
    rel = float(jnp.linalg.norm(flat(g16) - flat(g32)) / jnp.linalg.norm(flat(g32)))
    assert 0 < rel < GRAD_RTOL, rel  # > 0: the bfloat16 path really ran
    for probe in PROBES:
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(r32[probe])[0], jax.tree.leaves(r16[probe])):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=PROBE_RTOL, atol=PROBE_ATOL,
                                       err_msg=f"{probe} {jax.tree_util.keystr(path)}")  # fmt: skip


def test_compute_dtype_choices():
    with pytest.raises(ValueError, match="valid choices: bfloat16"):
        ModelConfig(compute_dtype="float16")
    with pytest.raises(ValueError, match="needs dtype='float32'"):
        ModelConfig(compute_dtype="bfloat16", dtype="bfloat16")


def _bf16_rounded64(a: jax.Array) -> np.ndarray:
    return np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32), np.float64)


def test_mixed_matmul_is_a_product_of_rounded_inputs():
    """Forward, input and weight gradients against float64 products of the bfloat16-rounded values
    (a product of two bfloat16 numbers is exact in float32: only the float32 sums round, ~1e-6)."""
    keys = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(keys[0], (4, 24, 64))  # (B, T, K): reshaped to (M, K) inside
    w = jax.random.normal(keys[1], (64, 48))
    cot = jax.random.normal(keys[2], (4, 24, 48))
    y, vjp = jax.vjp(lambda x, w: matmul(x, w, "bfloat16"), x, w)
    dx, dw = vjp(cot)
    assert {a.dtype for a in (y, dx, dw)} == {jnp.dtype(jnp.float32)}
    x64, w64, g64 = (_bf16_rounded64(a).reshape(-1, a.shape[-1]) for a in (x, w, cot))
    want = {"y": x64 @ w64, "dx": g64 @ w64.T, "dw": x64.T @ g64}
    got = {"y": y.reshape(-1, 48), "dx": dx.reshape(-1, 64), "dw": dw}
    for name, ref in want.items():
        np.testing.assert_allclose(np.asarray(got[name], np.float64), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=name)
    # the rounding is real: unrounded float64 products differ by far more than the tolerance above
    exact = np.asarray(x, np.float64).reshape(-1, 64).T @ np.asarray(cot, np.float64).reshape(-1, 48)
    assert np.abs(exact - want["dw"]).max() > 1e-3 * np.abs(exact).max()
    # vmapped over two seeds (accelerators vmap a run's seeds): each seed's gradients as computed alone
    pullback = lambda x, w, cot: jax.vjp(lambda x, w: matmul(x, w, "bfloat16"), x, w)[1](cot)
    both = jax.vmap(pullback)(jnp.stack([x, -0.5 * x]), jnp.stack([w, 2 * w]), jnp.stack([cot, cot]))
    for seed, (xs, ws) in enumerate([(x, w), (-0.5 * x, 2 * w)]):
        for got_seed, alone in zip(both, pullback(xs, ws, cot)):
            np.testing.assert_allclose(np.asarray(got_seed[seed]), np.asarray(alone), rtol=1e-5, atol=1e-5 * float(jnp.abs(alone).max()))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the layout is a CPU choice")
def test_compiled_cpu_mixed_products_contract_the_first_operands_last_axis():
    x = jax.random.normal(jax.random.key(0), (8, 64, 128))
    w = jax.random.normal(jax.random.key(1), (128, 96))
    grad = jax.grad(lambda x, w: jnp.sum(jnp.sin(matmul(x, w, "bfloat16"))), argnums=(0, 1))
    got = _contracted_lhs_axes(jax.jit(grad).lower(x, w).compile().as_text())
    assert len(got) >= 3, got  # forward, input gradient, weight gradient
    assert all(axis == rank - 1 for rank, axis in got), got
