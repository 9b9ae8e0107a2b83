"""Small reductions the probes share. Sites are (L, B, T, ...) under "layers" and (B, T, ...) under
"stack"; `lead` is the number of leading axes kept (1 for per-layer sites, 0 for one layer or a
stack-level site)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from models.dtypes import upcast


def frobenius(a: jax.Array, lead: int) -> jax.Array:
    """‖a‖_F over all axes after the first `lead` ones."""
    a = upcast(a)
    return jnp.sqrt(jnp.sum(jnp.square(a), axis=tuple(range(lead, a.ndim))))


def token_mean(per_token: jax.Array, lead: int) -> jax.Array:
    return jnp.mean(per_token, axis=tuple(range(lead, per_token.ndim)))


def rms(a: jax.Array, lead: int) -> jax.Array:
    """Mean over tokens of the per-token RMS over the feature axis."""
    a = upcast(a)
    return token_mean(jnp.sqrt(jnp.mean(jnp.square(a), axis=-1)), lead)


def inv_sigma(x: jax.Array, eps: float, lead: int) -> jax.Array:
    """Mean over tokens of 1/sqrt(Var(x) + ε) = √d/‖x − μ‖ (ε aside): the LN Jacobian's scale."""
    x = upcast(x)
    return token_mean(jax.lax.rsqrt(jnp.var(x, axis=-1) + eps), lead)


def per_level(sites: dict, fn: Callable[[jax.Array, int], jax.Array]) -> dict:
    """Apply fn(array, lead) with lead = 1 for per-layer sites and 0 for stack-level sites."""
    return {
        "layers": {k: fn(v, 1) for k, v in sites["layers"].items()},
        "stack": {k: fn(v, 0) for k, v in sites["stack"].items()},
    }


def norm_pairs(sites: dict) -> list[str]:
    """Norms with both their input and output among `sites` ("mlp_ln" for mlp_ln_norm_in/out)."""
    return [k[: -len("_norm_in")] for k in sites if k.endswith("_norm_in") and f"{k[:-2]}out" in sites]


def at_recorded_precision(site: jax.Array) -> jax.Array:
    """A site below float32 (bfloat16, float16) in float32, rounded to its own precision. Reduced
    inside the layer, the reduction fuses with the op that made the site, and XLA's excess-precision
    rule would otherwise read the unrounded float32 value (up to 5e-4 off the recorded bfloat16
    site's act_norm); reduce_precision is an op it keeps."""
    if jnp.finfo(site.dtype).bits >= 32:
        return site
    info = jnp.finfo(site.dtype)
    return jax.lax.reduce_precision(upcast(site), exponent_bits=info.nexp, mantissa_bits=info.nmant)


def no_stack_level(per_stack_layers: dict) -> dict:
    """{stack: {"layers": v, "stack": {}}} from {stack: v}: a probe with per-layer values only."""
    return {name: {"layers": layers, "stack": {}} for name, layers in per_stack_layers.items()}
