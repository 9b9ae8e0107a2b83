"""Named probe sites: record an intermediate value and optionally add a perturbation to it.

This is Flax's `perturb` idea in plain JAX. A forward pass creates one `Taps` per layer; every
residual-stream value that a probe may want goes through `taps.site(name, value)`, which returns
`value + perturb[name]` and records it. Differentiating the loss with respect to an all-zero
`perturb` gives ∂ℒ/∂site at every site in one backward pass; under the scanned layer stack the
per-layer perturbations are the scan's stacked inputs and the recorded sites its stacked outputs, so
every site comes back with a leading layer axis.

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

from typing import Any, Mapping

import jax

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
        if delta is not None:
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
