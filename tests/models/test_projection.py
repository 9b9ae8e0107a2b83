"""The projections' matmul (`models.layers.matmul`, float32 path): autodiff's gradients, computed
with the weight gradient as a standard-layout product on CPUs (`_projection`'s docstring says why).

Checked: input and weight gradients equal jax.grad of the plain `x @ w` (float64: to rounding;
float32: to a few ulps), forward-over-reverse (the Hessian probe's HVPs) agrees, and on a CPU the
backward program really materializes xᵀ behind an optimization barrier (the mechanism, not a speed).
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
    for name, a, b in (("dx", got[0], want[0]), ("dw", got[1], want[1]), ("hvp", got_hvp, want_hvp)):
        assert a.dtype == b.dtype == np.dtype(dtype), name
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.max(np.abs(b)), err_msg=name)


def test_cpu_backward_materializes_the_transposed_input() -> None:
    x, w, _ = _inputs(jnp.float32)
    hlo = jax.jit(jax.grad(PROJECTION, argnums=1)).lower(x, w).as_text()
    assert jax.default_backend() == "cpu"
    assert "optimization_barrier" in hlo, "the CPU weight gradient lost its barrier: XLA will fold xᵀ back"
    assert "optimization_barrier" not in jax.jit(jax.grad(REFERENCE, argnums=1)).lower(x, w).as_text()
