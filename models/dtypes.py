"""Precision of reductions: bfloat16 activations are reduced in float32, float64 stays float64.

Written out instead of `jnp.promote_types(dtype, float32)` because that call raises under
`jax_numpy_dtype_promotion="strict"` (which the test suite sets, to catch silent upcasts).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reduction_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float64 for float64 inputs, float32 for everything else (bfloat16, float16, float32)."""
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def upcast(x: jax.Array) -> jax.Array:
    """x in `reduction_dtype(x.dtype)`."""
    return x.astype(reduction_dtype(x.dtype))
