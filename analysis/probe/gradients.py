"""Gradient probes: parameter-gradient norms, site-gradient norms and the LN Jacobian's gain.

Each reads the gradients of the program's single backward pass (analysis.probe.probes): ∂ℒ/∂θ, and
‖∂ℒ/∂site‖ at every probe site (models.sites). Equations: docs/probes.md.
"""

from __future__ import annotations

from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from analysis.memory import ProbeMemory
from analysis.probe.reductions import inv_sigma, norm_pairs
from analysis.probe.registry import Needs, Probe, ProbeContext, register_probe
from models.dtypes import upcast


def _param_group_norms(layer_grads: Any) -> dict[str, jax.Array]:
    """(L,) gradient norms per parameter leaf ("attn.q.weight") and per top group ("attn", "norms")."""
    squares: dict[str, jax.Array] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(layer_grads)[0]:
        name = ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        sq = jnp.sum(jnp.square(upcast(leaf)), axis=tuple(range(1, leaf.ndim)))
        squares[name] = sq
        group = name.split(".")[0]
        squares[group] = squares.get(group, 0.0) + sq
        squares["block"] = squares.get("block", 0.0) + sq
    return {k: jnp.sqrt(v) for k, v in squares.items()}


def _global_norm(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(upcast(x))) for x in leaves)) if leaves else jnp.zeros(())


def param_grad_norm(ctx: ProbeContext, options: None) -> dict:
    """‖∂ℒ/∂θ‖₂ per layer for every parameter leaf ("attn.q.weight"), every group ("attn", "norms")
    and the whole block ("block"); stack-level: each non-layer parameter tree of a stack (final norm,
    ...) and of the model (embedding, head). G_l = ‖∂ℒ/∂W2_l‖ (site mlp.w2.weight) is the per-layer
    quantity of Xiong et al. 2020 and Takase et al. 2022."""
    grads = nnx.to_pure_dict(ctx.param_grads)
    per_stack = {
        name: {
            "layers": _param_group_norms(stack_grads["layers"]),
            "stack": {k: _global_norm(v) for k, v in stack_grads.items() if k != "layers"},
        }
        for name, stack_grads in grads["stacks"].items()
    }
    model_level = {k: _global_norm(v) for k, v in grads.items() if k != "stacks"}
    return {"param_grad_norm": {**per_stack, "model": {"layers": {}, "stack": model_level}}}


def act_grad_norm(ctx: ProbeContext, options: None) -> dict:
    """‖∂ℒ/∂s‖_F over batch, tokens and features at every site s of every layer, from the zero
    perturbations (or squared-norm taps) the program adds at every site (Flax's `perturb` idea)."""
    return {"act_grad_norm": ctx.site_grad_norm}


def _gain_estimate_summary(layer: dict, eps: float) -> dict:
    return {p: inv_sigma(layer[f"{p}_norm_in"], eps, 0) for p in norm_pairs(layer)}


def ln_jacobian_gain(ctx: ProbeContext, options: None) -> dict:
    """ln_jacobian_gain = ‖J_normᵀ g‖/‖g‖ = ‖∂ℒ/∂x‖/‖∂ℒ/∂LN(x)‖ for the actual upstream gradient g at
    every norm; ln_gain_estimate = E_tokens 1/sqrt(Var(x) + ε): LayerNorm's Jacobian is
    (γ/σ)(I − 11ᵀ/d − yyᵀ/d), 1/σ times a projection (Takase et al. 2022's argument for Post-LN's
    shrinking backward signal). The estimate is computed inside each layer (`Needs.summary`)."""
    gain, estimate = {}, {}
    for name in ctx.sites:
        gain[name], estimate[name] = {}, {}
        for level, lead in (("layers", 1), ("stack", 0)):
            g, s = ctx.site_grad_norm[name][level], ctx.sites[name][level]
            pairs = norm_pairs(s)
            gain[name][level] = {p: g[f"{p}_norm_in"] / g[f"{p}_norm_out"] for p in pairs}
            estimate[name][level] = (
                ctx.summary[name]["ln_jacobian_gain"]
                if level == "layers"
                else {p: inv_sigma(s[f"{p}_norm_in"], ctx.cfg.norm_eps, lead) for p in pairs}
            )
    return {"ln_jacobian_gain": gain, "ln_gain_estimate": estimate}


register_probe(
    Probe(
        "param_grad_norm",
        "‖∂ℒ/∂θ‖ per layer and per parameter group (attn, cross, mlp, norms, extra)",
        param_grad_norm,
        needs=Needs(param_grads=True),
        memory=ProbeMemory(param_grads=True),
    )
)
register_probe(
    Probe(
        "act_grad_norm",
        "‖∂ℒ/∂site‖ (Frobenius over batch and tokens) at every site of every layer",
        act_grad_norm,
        needs=Needs(site_grads=True),
    )
)
register_probe(
    Probe(
        "ln_jacobian_gain",
        "‖J_normᵀ g‖/‖g‖ for the actual upstream g, and the 1/σ(x) estimate",
        ln_jacobian_gain,
        needs=Needs(site_grads=True, summary=_gain_estimate_summary),
        quantities={"ln_jacobian_gain": None, "ln_gain_estimate": None},
    )
)
