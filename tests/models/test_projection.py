"""The projections' matmul (`models.layers.matmul`, float32 path): autodiff's derivatives, with the
weight gradient computed as a standard-layout product on CPUs (`_projection`'s docstring says why).

Checked: input and weight gradients equal jax.grad of the plain `x @ w` (float64: to rounding;
float32: to a few ulps), so do forward-over-reverse HVPs (the Hessian probe), forward-mode JVPs and
jacfwd (a custom JVP, so forward mode keeps working), also under vmap; a program lowered for a CPU
materializes xᵀ behind an optimization barrier while one lowered for a GPU does not; and in the
compiled CPU program every product contracts its first operand's last axis: plain, one seed through
`analysis.runtime.vmap_seeds` (squeezed, as the training programs run it) and two seeds vmapped (the
mechanism, not a speed: autodiff's own form fails this check in all three).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.runtime import vmap_seeds
from models.layers import matmul


def _inputs(dtype):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (3, 5, 16), dtype)  # (B, T, K): reshaped to (M, K) inside
    w = jax.random.normal(keys[1], (16, 12), dtype)
    v = jax.random.normal(keys[2], (16, 12), dtype)  # an HVP direction
    return x, w, v


def _loss(mm):
    return lambda x, w: jnp.sum(jnp.sin(mm(x, w)) * jnp.arange(12, dtype=x.dtype))


PROJECTION = _loss(lambda x, w: matmul(x, w, None))
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
        fn = lambda f: (lambda x, w, v: _derivatives(f, x, w, v))
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
    lowered = lambda f, platform: jax.jit(jax.grad(f, argnums=1)).trace(x, w).lower(lowering_platforms=(platform,)).as_text()
    assert "optimization_barrier" in lowered(PROJECTION, "cpu"), "the CPU weight gradient lost its barrier: XLA folds xᵀ back"
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
