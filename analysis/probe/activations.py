"""Activation probes: site norms and sublayer update ratios, reduced inside each layer of the forward
pass. Equations: docs/probes.md."""

from __future__ import annotations

import jax.numpy as jnp

from analysis.probe.reductions import no_stack_level, rms, token_mean
from analysis.probe.registry import Needs, Probe, ProbeContext, register_probe
from models.block import sublayer_input_site


def _act_norm_summary(layer: dict, eps: float) -> dict:
    return {k: rms(v, 0) for k, v in layer.items()}


def act_norm(ctx: ProbeContext, options: None) -> dict:
    """mean_t sqrt(mean_i s_{t,i}²): the mean per-token RMS at every site. Post-LN's stream sits at 1;
    Pre-LN's grows with depth (‖x_l‖² ∝ l at initialization; Xiong et al. 2020)."""
    return {
        "act_norm": {
            name: {"layers": ctx.summary[name]["act_norm"], "stack": {k: rms(v, 0) for k, v in s["stack"].items()}}
            for name, s in ctx.sites.items()
        }
    }


def _update_ratio_summary(layer: dict, eps: float) -> dict:
    """Token mean of ‖sublayer output‖ / ‖sublayer input‖ per sublayer kind present in one layer's sites."""
    kinds = tuple(k for k in ("attn", "cross", "mlp") if f"{k}_out" in layer)
    per_token = lambda f, x: jnp.linalg.norm(f, axis=-1) / jnp.linalg.norm(x, axis=-1)
    return {k: token_mean(per_token(layer[f"{k}_out"], layer[sublayer_input_site(kinds, k)]), 0) for k in kinds}


def update_ratio(ctx: ProbeContext, options: None) -> dict:
    """mean_t ‖S(x)_t‖/‖x_t‖ per sublayer kind: the branch output S(x) (before any weighting the
    placement applies) relative to the stream it joins; falls with depth in Pre-LN (Xie et al. 2023)."""
    return {"update_ratio": no_stack_level({name: ctx.summary[name]["update_ratio"] for name in ctx.sites})}


register_probe(
    Probe(
        "act_norm",
        "mean per-token RMS of every site",
        act_norm,
        needs=Needs(summary=_act_norm_summary),
    )
)
register_probe(
    Probe(
        "update_ratio",
        "mean per-token ‖S(x)‖/‖x‖ of each sublayer's contribution to the stream",
        update_ratio,
        needs=Needs(summary=_update_ratio_summary),
    )
)
