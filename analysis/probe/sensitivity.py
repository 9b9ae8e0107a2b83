"""Sensitivity probes (costly: more passes than the shared one): how far a small parameter step moves
the output, and the loss's top curvature. Equations: docs/probes.md."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import jax
import jax.numpy as jnp

from analysis.probe.registry import Needs, Probe, ProbeContext, register_probe

OutputChangeMode = Literal["sign_grad", "random_sign"]
OUTPUT_CHANGE_MODES: tuple[str, ...] = get_args(OutputChangeMode)


@dataclass(frozen=True)
class OutputChangeOptions:
    """Options of output_change (flat keywords `output_change_lr`, `output_change_mode`).

    Attributes:
        lr: step size of δ on every layer parameter (embeddings and head frozen).
        mode: "sign_grad" (δ = −lr·sign(∂ℒ/∂θ), an Adam-like first step; Liu et al. 2020) or
            "random_sign" (δ = lr·random signs).
    """

    lr: float = 1e-4
    mode: OutputChangeMode = "sign_grad"

    def __post_init__(self) -> None:
        if self.mode not in OUTPUT_CHANGE_MODES:
            raise ValueError(f"unknown output_change_mode {self.mode!r}; valid: {', '.join(OUTPUT_CHANGE_MODES)}")
        if not (isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and 0 < self.lr < math.inf):
            raise ValueError(f"output_change_lr must be a finite number > 0, got {self.lr!r}")


@dataclass(frozen=True)
class HessianOptions:
    """Options of hessian_top_eig (flat keyword `hessian_iters`).

    Attributes:
        iters: power-iteration steps.
    """

    iters: int = 20

    def __post_init__(self) -> None:
        if not isinstance(self.iters, int) or isinstance(self.iters, bool) or self.iters < 1:
            raise ValueError(f"hessian_iters must be an integer >= 1, got {self.iters!r}")


def _is_layer_path(path: tuple) -> bool:
    keys = [getattr(p, "key", None) for p in path]
    return len(keys) >= 3 and keys[0] == "stacks" and keys[2] == "layers"


def output_change(ctx: ProbeContext, options: OutputChangeOptions) -> dict:
    """E_tokens ‖F̂(θ + δ) − F̂(θ)‖², F̂(x) = x/std(x) per token, F = the top stack's output, for a
    step δ on every layer parameter: Admin's "amplification" (Liu et al. 2020, "Understanding the
    Difficulty of Training Transformers"). One more forward pass."""
    top = "decoder" if "decoder" in ctx.sites else "encoder"  # not list(sites)[-1]: pytree transforms sort dict keys
    base = ctx.sites[top]["stack"]["stack_out"]
    if options.mode == "sign_grad":
        direction = jax.tree.map(lambda g: -jnp.sign(g), ctx.param_grads)
    else:
        leaves, treedef = jax.tree.flatten(ctx.state)
        keys = jax.random.split(jax.random.fold_in(ctx.key, 2), len(leaves))
        signs = [jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
        direction = jax.tree.unflatten(treedef, signs)
    moved = jax.tree_util.tree_map_with_path(
        lambda path, x, d: x + options.lr * d if _is_layer_path(path) else x, ctx.state, direction
    )
    after = ctx.forward(moved, None)[1].sites[top]["stack"]["stack_out"]
    normalize = lambda x: x / jnp.std(x, axis=-1, keepdims=True)
    change = jnp.mean(jnp.sum(jnp.square(normalize(after) - normalize(base)), axis=-1))
    return {"output_change": {top: {"layers": {}, "stack": {"stack_out": change}}}}


def hessian_top_eig(ctx: ProbeContext, options: HessianOptions) -> dict:
    """λ_max(∇²ℒ) by power iteration v ← Hv/‖Hv‖, λ = vᵀHv, with Hessian-vector products by
    forward-over-reverse differentiation (Pearlmutter 1994); `iters` HVPs."""
    return {"hessian_top_eig": {"model": {"layers": {}, "stack": {"loss": _hessian_top_eig(ctx, options.iters)}}}}


def _hessian_top_eig(ctx: ProbeContext, iters: int) -> jax.Array:
    state = ctx.state
    loss = lambda s: ctx.forward(s, None)[0]
    grad = jax.grad(loss)
    hvp = lambda v: jax.jvp(grad, (state,), (v,))[1]
    dot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.fold_in(ctx.key, 3), len(leaves))
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    v = jax.tree.map(lambda x: x / jnp.sqrt(dot(v, v)), v)

    def step(_, carry):
        v, _ = carry
        hv = hvp(v)
        eig = dot(v, hv)
        return jax.tree.map(lambda x: x / jnp.sqrt(dot(hv, hv)), hv), eig

    _, eig = jax.lax.fori_loop(0, iters, step, (v, jnp.zeros_like(dot(v, v))))
    return eig


register_probe(
    Probe(
        "output_change",
        "E_tokens ‖F̂(θ + δ) − F̂(θ)‖² of the normalized stack output for a small step δ",
        output_change,
        needs=lambda options: Needs(param_grads=options.mode == "sign_grad"),
        options=OutputChangeOptions,
        cost="costly",
    )
)
register_probe(
    Probe(
        "hessian_top_eig",
        "top Hessian eigenvalue of the loss by power iteration on HVPs (costly)",
        hessian_top_eig,
        options=HessianOptions,
        option_prefix="hessian",
        cost="costly",
    )
)
