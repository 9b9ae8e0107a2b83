"""Named probe sites: record an intermediate value and optionally add a perturbation to it.

This is Flax's `perturb` idea in plain JAX. A forward pass creates one `Taps` per layer; every
residual-stream value that a probe may want goes through `taps.site(name, value)`, which returns
`value + perturb[name]` and records it. Differentiating the loss with respect to an all-zero
`perturb` gives ∂ℒ/∂site at every site in one backward pass; under the scanned layer stack the
per-layer perturbations are the scan's stacked inputs and the recorded sites its stacked outputs, so
every site comes back with a leading layer axis.

A perturbation may instead be a `SquaredNormTap` (`squared_norm_taps(stack_sites)`): it adds nothing,
and its gradient is ‖∂ℒ/∂site‖² itself (a sum of squares over every axis of the site in its
reduction dtype, float32 or float64 for float64 sites; per layer under a stack). The backward pass
then reduces each site's gradient where it is computed instead of stacking full (L, B, T, D)
gradient arrays out of the layer loop and zero arrays into it; the probes that only need gradient
norms (act_grad_norm, ln_jacobian_gain) use it in scanned stacks.

`taps.stat(name, value)` records a small summary (e.g. attention entropy per head) that is not a
perturbation point.

Site vocabulary (TransformerLens names, per layer):
    resid_pre, resid_mid, resid_mid_cross (encdec decoder), resid_post   stream between sublayers
    attn_out, cross_out, mlp_out                                        sublayer (branch) outputs
    {kind}_{slot}_norm_in / _norm_out                                   each norm's input and output
and per stack: embed, final_norm_in, final_norm_out, stack_out. Placements add their own (e.g.
ResiDual's dual stream `dual_resid_post`, B2T's `b2t_skip`). A perturbation at `*_norm_in` enters only
the norm's path, so its gradient is exactly J_normᵀ·(∂ℒ/∂norm_out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from models.dtypes import reduction_dtype, upcast

Sites = dict[str, jax.Array]


class Taps:
    """Collects the sites and stats of one forward scope (a layer, or a stack's ends)."""

    def __init__(self, perturb: Mapping[str, jax.Array] | None = None, record: bool = True):
        self.perturb = perturb or {}
        self.record = record
        self.sites: Sites = {}
        self.stats: Sites = {}

    def site(self, name: str, value: jax.Array) -> jax.Array:
        if name in self.sites:
            raise ValueError(f"probe site {name!r} recorded twice in one scope; names must be unique")
        delta = self.perturb.get(name)
        if isinstance(delta, SquaredNormTap):
            value = _squared_norm_tap(value, delta.zero)
        elif delta is not None:
            value = value + delta.astype(value.dtype)
        if self.record:
            self.sites[name] = value
        return value

    def stat(self, name: str, value: jax.Array) -> None:
        if self.record:
            self.stats[name] = value


def zeros_like_sites(sites: Any) -> Any:
    """All-zero perturbations with the structure of a forward's `sites` (float leaves only)."""
    return jax.tree.map(lambda a: jax.numpy.zeros(a.shape, a.dtype), sites)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class SquaredNormTap:
    """A perturbation point whose gradient is ‖∂ℒ/∂site‖² instead of ∂ℒ/∂site.

    `zero` is a zero in the site's reduction dtype (float32, or float64 for a float64 site): shape ()
    for one site, (L,) for a site of every layer of a stack (the layer loop slices it like any
    per-layer perturbation). The forward is the identity.
    """

    zero: jax.Array


@jax.custom_vjp
def _squared_norm_tap(value: jax.Array, zero: jax.Array) -> jax.Array:
    return value


def _squared_norm_tap_fwd(value: jax.Array, zero: jax.Array) -> tuple[jax.Array, None]:
    return value, None


def _squared_norm_tap_bwd(_: None, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The cotangent passes on unchanged; the tap's own "gradient" is the statistic.
    return g, jnp.sum(jnp.square(upcast(g)))


_squared_norm_tap.defvjp(_squared_norm_tap_fwd, _squared_norm_tap_bwd)


def squared_norm_taps(stack_sites: Any) -> Any:
    """`SquaredNormTap`s with the structure of one stack's sites ({"layers": {site: (L, ...)}, "stack":
    {site: ...}}): differentiating the loss with respect to them gives ‖∂ℒ/∂site‖², (L,) per layer
    site and () per stack site."""

    def level(tree: Any, lead: int) -> Any:
        return jax.tree.map(lambda a: SquaredNormTap(jnp.zeros(a.shape[:lead], reduction_dtype(a.dtype))), tree)

    return {"layers": level(stack_sites["layers"], 1), "stack": level(stack_sites["stack"], 0)}
