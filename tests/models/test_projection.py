"""The projections' matmul (`models.layers.matmul`, float32 path): autodiff's derivatives, with the
weight gradient computed as a standard-layout product on CPUs (`_projection`'s docstring says why).

Checked: input and weight gradients equal jax.grad of the plain `x @ w` (float64: to rounding;
float32: to a few ulps), so do forward-over-reverse HVPs (the Hessian probe) and forward-mode JVPs
and jacfwd (a custom JVP, so forward mode keeps working), and a program lowered for a CPU really
materializes xᵀ behind an optimization barrier while one lowered for a GPU does not (the mechanism,
not a speed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_gradients_are_autodiffs(dtype: str, rtol: float) -> None:
    with jax.enable_x64(dtype == "float64"):
        x, w, v = _inputs(jnp.dtype(dtype))
        got = jax.jit(jax.grad(PROJECTION, argnums=(0, 1)))(x, w)
        want = jax.jit(jax.grad(REFERENCE, argnums=(0, 1)))(x, w)
        hvp = lambda f: jax.jvp(lambda w: jax.grad(f, argnums=1)(x, w), (w,), (v,))[1]
        got_hvp, want_hvp = jax.jit(lambda: hvp(PROJECTION))(), jax.jit(lambda: hvp(REFERENCE))()
        jvp = lambda f: jax.jvp(f, (x, w), (jnp.cos(x), v))[1]
        got_jvp, want_jvp = jax.jit(lambda: jvp(PROJECTION))(), jax.jit(lambda: jvp(REFERENCE))()
        jac = lambda f: jax.jacfwd(f, argnums=1)(x, w)
        got_jac, want_jac = jax.jit(lambda: jac(PROJECTION))(), jax.jit(lambda: jac(REFERENCE))()
    pairs = [("dx", got[0], want[0]), ("dw", got[1], want[1]), ("hvp", got_hvp, want_hvp)]
    pairs += [("jvp", got_jvp, want_jvp), ("jacfwd", got_jac, want_jac)]
    for name, a, b in pairs:
        assert a.dtype == b.dtype == np.dtype(dtype), name
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)), err_msg=name)


def test_only_cpu_programs_materialize_the_transposed_input() -> None:
    x, w, _ = _inputs(jnp.float32)
    lowered = lambda f, platform: jax.jit(jax.grad(f, argnums=1)).trace(x, w).lower(lowering_platforms=(platform,)).as_text()
    assert "optimization_barrier" in lowered(PROJECTION, "cpu"), "the CPU weight gradient lost its barrier: XLA folds xᵀ back"
    assert "optimization_barrier" not in lowered(PROJECTION, "cuda"), "other platforms take autodiff's form"
    assert "optimization_barrier" not in lowered(REFERENCE, "cpu")
