"""analysis.execution.ops' projection products against independent references.

`layout_projection` (float32 path): autodiff's derivatives, with the weight gradient computed as a
standard-layout product on CPUs. Checked: input and weight gradients equal jax.grad of the plain
`x @ w` (float64: to rounding; float32: to a few ulps), so do forward-over-reverse HVPs (the Hessian
probe), forward-mode JVPs and jacfwd (a custom JVP, so forward mode keeps working), also under vmap;
a program lowered for a CPU materializes xᵀ behind an optimization barrier while one lowered for a
GPU does not; and in the compiled CPU program every product contracts its first operand's last axis:
plain, one seed through `vmap_seeds` (squeezed, as the training programs run it) and
two seeds vmapped (the mechanism, not a speed: autodiff's own form fails this check in all three).

`MixedProjection` (an execution plan's compute_dtype="bfloat16"): checked against a float64
restatement of its contract: output and both gradients are products of bfloat16-rounded inputs (and
cotangent), accumulated without further rounding, also vmapped over seeds; its compiled CPU backward
contracts every product's first operand on its last axis; and a whole model under it agrees with
float32 within the tolerances below, with float32 parameters, gradients and probes.
"""

from __future__ import annotations

import re

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.execution import ExecutionPlan, default_plan
from analysis.execution.ops import MixedProjection, layout_projection, vmap_seeds
from analysis.probe.loss import random_batch
from analysis.probe.probes import ProbeConfig, probe_program_with_grads
from models import ModelConfig, Transformer, init_state
from models.layers import project


def _inputs(dtype):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (3, 5, 16), dtype)  # (B, T, K): reshaped to (M, K) inside
    w = jax.random.normal(keys[1], (16, 12), dtype)
    v = jax.random.normal(keys[2], (16, 12), dtype)  # an HVP direction
    return x, w, v


def _loss(mm):
    return lambda x, w: jnp.sum(jnp.sin(mm(x, w)) * jnp.arange(12, dtype=x.dtype))


PROJECTION = _loss(lambda x, w: project(x, w, layout_projection))
REFERENCE = _loss(lambda x, w: x @ w)


def _derivatives(f, x, w, v):
    """Reverse, forward-over-reverse, forward and jacfwd derivatives of f at (x, w)."""
    grads = jax.grad(f, argnums=(0, 1))(x, w)
    hvp = jax.jvp(lambda w: jax.grad(f, argnums=1)(x, w), (w,), (v,))[1]
    jvp = jax.jvp(f, (x, w), (jnp.cos(x), v))[1]
    jac = jax.jacfwd(f, argnums=1)(x, w)
    return {"dx": grads[0], "dw": grads[1], "hvp": hvp, "jvp": jvp, "jacfwd": jac}


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("vmapped", [False, True])
def test_derivatives_are_autodiffs(dtype: str, rtol: float, vmapped: bool) -> None:
    with jax.enable_x64(dtype == "float64"):
        x, w, v = _inputs(jnp.dtype(dtype))
        fn = lambda f: lambda x, w, v: _derivatives(f, x, w, v)
        if vmapped:  # two "seeds": the second's inputs scaled so the two differ
            fn = lambda f, fn=fn: jax.vmap(fn(f))
            x, w, v = (jnp.stack([a, 0.5 * a]) for a in (x, w, v))
        got = jax.jit(fn(PROJECTION))(x, w, v)
        want = jax.jit(fn(REFERENCE))(x, w, v)
    for name in want:
        a, b = got[name], want[name]
        assert a.dtype == b.dtype == np.dtype(dtype), name
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)), err_msg=name)


def test_only_cpu_programs_materialize_the_transposed_input() -> None:
    x, w, _ = _inputs(jnp.float32)
    lowered = lambda f, platform: (
        jax.jit(jax.grad(f, argnums=1)).trace(x, w).lower(lowering_platforms=(platform,)).as_text()
    )
    assert "optimization_barrier" in lowered(PROJECTION, "cpu"), (
        "the CPU weight gradient lost its barrier: XLA folds xᵀ back"
    )
    assert "optimization_barrier" not in lowered(PROJECTION, "cuda"), "other platforms take autodiff's form"
    assert "optimization_barrier" not in lowered(REFERENCE, "cpu")


_DOT = re.compile(r"= \w+\[([\d,]*)\]\S* dot\(.*?lhs_contracting_dims=\{(\d+)\}")


def _contracted_lhs_axes(compiled_text: str) -> list[tuple[int, int]]:
    """(the dot's output rank, the first operand's contracted axis) of every dot in a compiled program."""
    return [(len(m.group(1).split(",")), int(m.group(2))) for m in _DOT.finditer(compiled_text)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the layout is a CPU choice")
@pytest.mark.parametrize("seeds", [None, 1, 2])
def test_compiled_cpu_products_contract_the_first_operands_last_axis(seeds: int | None) -> None:
    """Plain, one seed through vmap_seeds (the training programs: squeezed) and two seeds vmapped."""
    x, w, _ = _inputs(jnp.float32)
    x, w = jnp.tile(x, (8, 8, 8)), jnp.tile(w, (8, 1))  # (24, 40, 128) @ (128, 12): XLA keeps tiny products elementwise

    def products(f) -> list[tuple[int, int]]:
        grad = jax.grad(f, argnums=(0, 1))
        args, fn = (x, w), grad
        if seeds is not None:
            args, fn = (jnp.stack([x] * seeds), jnp.stack([w] * seeds)), vmap_seeds(grad)
        return _contracted_lhs_axes(jax.jit(fn).lower(*args).compile().as_text())

    got, reference = products(PROJECTION), products(REFERENCE)
    assert len(got) >= 3, got  # forward, input gradient, weight gradient
    # a (..., M, K)·(K, N)-like product contracts axis rank-1 of its first operand (batch axes lead)
    assert all(axis == rank - 1 for rank, axis in got), got
    assert not all(axis == rank - 1 for rank, axis in reference), "the check would pass without the change"


# bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 2e-3 per input); float32 accumulation
# keeps the sums' own rounding small. Observed at these shapes (decoder / encdec): loss 1.3e-4 /
# 2.6e-4 relative; the whole gradient (L2 over every parameter) 3.4e-2 / 1.1e-2 relative; probe
# values 7.7e-3 relative at most (param_grad_norm), 2.8e-3 absolute. Each tolerance ~3x that.
LOSS_RTOL = 1e-3
GRAD_RTOL = 0.1
PROBE_RTOL = 2.5e-2
PROBE_ATOL = 1e-2  # near-zero probe values (CKA null, small gradient norms) carry only the absolute error
PROBES = ("param_grad_norm", "act_grad_norm", "ln_jacobian_gain", "act_norm", "update_ratio", "cos_adjacent", "cka")


MIXED = MixedProjection("bfloat16")


def _run(cfg: ModelConfig, plan: ExecutionPlan):
    _, state = init_state(cfg, 0)  # the same float32 parameters
    graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0), plan.model_ops())))[0]
    batch = random_batch(cfg, jax.random.key(1), 4, 16)
    fn = jax.jit(
        lambda s, b: probe_program_with_grads(graphdef, s, b, cfg, ProbeConfig(probes=PROBES), jax.random.key(2))
    )
    return fn(state, batch)


@pytest.mark.parametrize("arch", ["decoder", "encdec"])
def test_bfloat16_compute_matches_float32(arch):
    base = ModelConfig(arch=arch, placement="pre", layers=2, d_model=32, heads=4, d_ff=64, vocab=32, max_len=16)
    plan = default_plan()
    (r32, g32), (r16, g16) = _run(base, plan), _run(base, plan.replace(compute_dtype="bfloat16"))
    # everything the user sees stays float32: gradients (the optimizer's input) and probes
    assert {a.dtype for a in jax.tree.leaves((r16, g16))} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(float(r16["loss"]), float(r32["loss"]), rtol=LOSS_RTOL)
    flat = lambda tree: jnp.concatenate([a.reshape(-1) for a in jax.tree.leaves(tree)])
    rel = float(jnp.linalg.norm(flat(g16) - flat(g32)) / jnp.linalg.norm(flat(g32)))
    assert 0 < rel < GRAD_RTOL, rel  # > 0: the bfloat16 path really ran
    for probe in PROBES:
        for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(r32[probe])[0], jax.tree.leaves(r16[probe])):
            np.testing.assert_allclose(
                np.asarray(b),
                np.asarray(a),
                rtol=PROBE_RTOL,
                atol=PROBE_ATOL,
                err_msg=f"{probe} {jax.tree_util.keystr(path)}",
            )


def _bf16_rounded64(a: jax.Array) -> np.ndarray:
    return np.asarray(jnp.asarray(a, jnp.bfloat16).astype(jnp.float32), np.float64)


def test_mixed_matmul_is_a_product_of_rounded_inputs():
    """Forward, input and weight gradients against float64 products of the bfloat16-rounded values
    (a product of two bfloat16 numbers is exact in float32: only the float32 sums round, ~1e-6)."""
    keys = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(keys[0], (4, 24, 64))  # (B, T, K): reshaped to (M, K) inside
    w = jax.random.normal(keys[1], (64, 48))
    cot = jax.random.normal(keys[2], (4, 24, 48))
    y, vjp = jax.vjp(lambda x, w: project(x, w, MIXED), x, w)
    dx, dw = vjp(cot)
    assert {a.dtype for a in (y, dx, dw)} == {jnp.dtype(jnp.float32)}
    x64, w64, g64 = (_bf16_rounded64(a).reshape(-1, a.shape[-1]) for a in (x, w, cot))
    want = {"y": x64 @ w64, "dx": g64 @ w64.T, "dw": x64.T @ g64}
    got = {"y": y.reshape(-1, 48), "dx": dx.reshape(-1, 64), "dw": dw}
    for name, ref in want.items():
        np.testing.assert_allclose(
            np.asarray(got[name], np.float64), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(), err_msg=name
        )
    # the rounding is real: unrounded float64 products differ by far more than the tolerance above
    exact = np.asarray(x, np.float64).reshape(-1, 64).T @ np.asarray(cot, np.float64).reshape(-1, 48)
    assert np.abs(exact - want["dw"]).max() > 1e-3 * np.abs(exact).max()
    # vmapped over two seeds (accelerators vmap a run's seeds): each seed's gradients as computed alone
    pullback = lambda x, w, cot: jax.vjp(lambda x, w: project(x, w, MIXED), x, w)[1](cot)
    both = jax.vmap(pullback)(jnp.stack([x, -0.5 * x]), jnp.stack([w, 2 * w]), jnp.stack([cot, cot]))
    for seed, (xs, ws) in enumerate([(x, w), (-0.5 * x, 2 * w)]):
        for got_seed, alone in zip(both, pullback(xs, ws, cot)):
            np.testing.assert_allclose(
                np.asarray(got_seed[seed]), np.asarray(alone), rtol=1e-5, atol=1e-5 * float(jnp.abs(alone).max())
            )


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the layout is a CPU choice")
def test_compiled_cpu_mixed_products_contract_the_first_operands_last_axis():
    x = jax.random.normal(jax.random.key(0), (8, 64, 128))
    w = jax.random.normal(jax.random.key(1), (128, 96))
    grad = jax.grad(lambda x, w: jnp.sum(jnp.sin(project(x, w, MIXED))), argnums=(0, 1))
    got = _contracted_lhs_axes(jax.jit(grad).lower(x, w).compile().as_text())
    assert len(got) >= 3, got  # forward, input gradient, weight gradient
    assert all(axis == rank - 1 for rank, axis in got), got


# -- vmap_seeds: one seed unbatched, several vmapped ---------------------------------------------
def _seed_fn(params, seed, scale):
    """A tiny per-seed computation with a product (what vmap would batch) and two outputs."""
    x = jax.random.normal(jax.random.key(seed), (4, 3))
    return {"y": jnp.tanh(x @ params["w"]) * scale, "n": jnp.sum(params["w"] ** 2)}


@pytest.mark.parametrize("seeds", [1, 3])
def test_vmap_seeds_equals_vmap_and_squeezes_one_seed(seeds: int) -> None:
    params = {"w": jnp.stack([jnp.full((3, 2), 0.5 + i) for i in range(seeds)])}
    seed_array = jnp.arange(seeds, dtype=jnp.uint32)
    got = jax.jit(vmap_seeds(_seed_fn, in_axes=(0, 0, None)))(params, seed_array, 2.0)
    want = jax.jit(jax.vmap(_seed_fn, in_axes=(0, 0, None)))(params, seed_array, 2.0)
    assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)
    program = jax.jit(vmap_seeds(_seed_fn, in_axes=(0, 0, None))).trace(params, seed_array, 2.0).jaxpr
    batched = any(
        len(eqn.params.get("dimension_numbers", ((), ((), ())))[1][0])
        for eqn in program.eqns
        if eqn.primitive.name == "dot_general"
    )
    assert batched == (seeds > 1), "one seed runs unbatched; several are vmapped"


def test_vmap_seeds_single_argument_default_axis() -> None:
    got = vmap_seeds(lambda s: s * 2)(jnp.arange(1.0, 2.0))
    assert got.shape == (1,) and float(got[0]) == 2.0


@pytest.mark.parametrize("in_axes", [1, -1, (0, 1), ({"w": 0}, None), (True, 0)])
def test_vmap_seeds_names_an_axis_it_cannot_squeeze(in_axes) -> None:
    with pytest.raises(ValueError, match=r"in_axes entries must be 0 or None, got"):
        vmap_seeds(_seed_fn, in_axes=in_axes)
