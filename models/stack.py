"""A layer stack: L blocks created with `nnx.vmap` (parameters with a leading layer axis), applied
either as an unrolled Python loop (shallow stacks: the faster step) or with a scan (deep stacks:
compile time does not grow with depth); `ModelConfig.unroll_layers` is the switch.

The scan runs over the split NNX state (`nnx.split` → slice → `jax.lax.scan` with `nnx.merge` in the
body), which is what `nnx.scan` does internally; working on the state directly lets placements with
layer segments (Mix-LN: Post-LN layers, then Pre-LN layers) scan each slice of the same stacked
parameters with its own wiring. Per-layer perturbations enter as scanned inputs and per-layer sites
leave as scanned outputs, so each site comes back as an (L, ...) array.

Why unroll at all: the scan keeps its saved-for-backward values in stacked (L, ...) buffers that are
zero-filled and sliced every step, which cost ~15% of a 6-layer training step on CPU. Unrolled
naively the step got *slower* (1.3x at 6 layers, 2.4x at 18): XLA fused the residual-gradient chain
into each layer's weight-gradient transposes and recomputed it there. `grad_barrier` at every layer
input stops that: the incoming gradient is materialized once per layer (an optimization barrier in
the backward pass only), and the unrolled step then runs ~0.85x the scanned one (6 and 18 layers,
d=128, CPU; benchmarks/README.md) with the same gradients. Compile time grows with unrolled depth,
hence the threshold.

Deep stacks scan, and on a CPU (`ModelConfig.scan_remat`) each scanned layer is a `jax.checkpoint`
that saves nothing: the backward pass recomputes the layer's forward from its input instead of
reading ~30 intermediates per layer from stacked buffers that the forward filled one slice at a
time. On these small matrices the buffer traffic cost more than the recomputed products (a 12-layer
init study 0.82x, a 24-layer d=128 step 0.92x; compile also faster). Sites and per-layer summaries
are the scan's outputs, computed in the forward as before.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from models.block import Block
from models.config import ModelConfig, StackSpec
from models.norms import make_norm
from models.placements import PLACEMENTS
from models.sites import Taps


@jax.custom_vjp
def grad_barrier(tree: Any) -> Any:
    """Identity whose backward puts the incoming gradient through `jax.lax.optimization_barrier`.

    Forward: nothing changes. Backward: XLA must materialize ∂ℒ/∂(layer input) before anything
    below uses it, so it cannot fuse the residual-gradient chain into (and recompute it inside) the
    layer's weight-gradient products. Values and gradients are exactly those without the barrier.
    """
    return tree


def _barrier_fwd(tree: Any) -> tuple[Any, None]:
    return tree, None


def _barrier_bwd(_: None, cotangent: Any) -> tuple[Any]:
    return (jax.lax.optimization_barrier(cotangent),)


grad_barrier.defvjp(_barrier_fwd, _barrier_bwd)


def _unstack(tree: Any, n: int) -> list[Any]:
    """n trees, the i-th holding leaf[i] of every (n, ...) leaf of `tree` (None -> n Nones)."""
    if tree is None:
        return [None] * n
    leaves, treedef = jax.tree.flatten(tree)
    parts = [[jnp.squeeze(p, 0) for p in jnp.split(leaf, n, axis=0)] for leaf in leaves]
    return [jax.tree.unflatten(treedef, [p[i] for p in parts]) for i in range(n)]


def unrolled(stack_layers: int, cfg_threshold: int) -> bool:
    """Whether a stack of `stack_layers` layers runs unrolled (`ModelConfig.unroll_layers`)."""
    return stack_layers <= cfg_threshold


def scan_remat(choice: bool | None) -> bool:
    """Whether scanned layers recompute their forward in the backward (`ModelConfig.scan_remat`;
    None: where JAX's default backend is a CPU)."""
    return jax.default_backend() == "cpu" if choice is None else choice


def _recomputed(body: Callable) -> Callable:
    """`body` whose backward recomputes its forward from its inputs (nothing else saved). CSE stays
    allowed: inside a scan the recomputation cannot be merged with the forward anyway (JAX's advice
    for checkpoint under scan)."""
    return jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)


class Stack(nnx.Module):
    def __init__(self, cfg: ModelConfig, spec: StackSpec, rngs: nnx.Rngs):
        placement = PLACEMENTS[spec.placement]
        self.spec = spec
        self.unroll = unrolled(spec.layers, cfg.unroll_layers)
        self.remat = not self.unroll and scan_remat(cfg.scan_remat)
        self.consts = dict(placement.constants(cfg, spec))
        self.segments = tuple(
            (wiring, n) for wiring, n in placement.layer_segments(cfg, spec)
        )

        @nnx.split_rngs(splits=spec.layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make_layers(rngs: nnx.Rngs) -> Block:
            return Block(cfg, spec, rngs)

        self.layers = make_layers(rngs)
        self.final_norm = make_norm(cfg.d_model, cfg, rngs) if placement.final_norm else None
        self.embed_norm = make_norm(cfg.d_model, cfg, rngs) if placement.embed_norm else None

    def __call__(
        self,
        x: jax.Array,  # (B, T, D) embedded inputs
        *,
        memory: jax.Array | None = None,  # (B, S, D) encoder output, for cross-attention
        perturb: Mapping[str, Any] | None = None,  # {"layers": {site: (L, ...)}, "stack": {site: ...}}
        record: bool = True,
        dropout_key: jax.Array | None = None,
        summarize: Callable[[dict], dict] | None = None,
    ) -> tuple[jax.Array, dict, dict]:
        """Returns (output (B, T, D), sites {"layers": {..}, "stack": {..}}, stats {"layers": {..}}).

        `summarize(layer_sites) -> pytree of arrays` (with `record`) runs inside every layer on that
        layer's sites; its results come back stacked under stats["layers"]["summary"]. Reductions
        taken there read each site where it is made: a probe that only reduces a site then needs no
        (L, B, T, D) stack of it, and XLA drops the unused stacks."""
        placement = PLACEMENTS[self.spec.placement]
        perturb = perturb or {}
        ends = Taps(perturb.get("stack"), record)
        x = ends.site("embed", x)
        if self.embed_norm is not None:  # Peri-LN's h₀ = LN(e)
            x = ends.site("embed_norm_out", self.embed_norm(ends.site("embed_norm_in", x)))
        stream = placement.start(x, self.consts)

        graphdef, state = nnx.split(self.layers)
        layer_perturb = perturb.get("layers")
        keys = None if dropout_key is None else jax.random.split(dropout_key, self.spec.layers)
        sites, stats, lo = [], [], 0
        for wiring, n in self.segments:
            window = lambda tree: None if tree is None else jax.tree.map(lambda a: a[lo : lo + n], tree)

            def body(carry, xs, wiring=wiring):
                layer_state, layer_perturb_l, key = xs
                taps = Taps(layer_perturb_l, record)
                block = nnx.merge(graphdef, layer_state)
                carry = block(
                    carry, wiring=wiring, consts=self.consts, memory=memory, taps=taps, dropout_key=key
                )
                layer_stats = taps.stats
                if summarize is not None and record:
                    layer_stats = {**layer_stats, "summary": summarize(taps.sites)}
                return carry, (taps.sites, layer_stats)

            if self.unroll:
                # Layer by layer. Slices come from one split per stacked leaf: the transpose of a
                # split is one concatenate, where L separate slices would transpose to L
                # full-size zero-padded gradients summed (O(L²) memory traffic).
                layer_states, layer_perturbs = _unstack(window(state), n), _unstack(window(layer_perturb), n)
                seg_sites, seg_stats = [], []
                for i in range(n):
                    key = None if keys is None else keys[lo + i]
                    stream, (layer_sites, layer_stats) = body(grad_barrier(stream), (layer_states[i], layer_perturbs[i], key))
                    seg_sites.append(layer_sites)
                    seg_stats.append(layer_stats)
                stack_up = lambda *parts: jnp.stack(parts, axis=0)
                seg_sites, seg_stats = jax.tree.map(stack_up, *seg_sites), jax.tree.map(stack_up, *seg_stats)
            else:
                stream, (seg_sites, seg_stats) = jax.lax.scan(
                    _recomputed(body) if self.remat else body, stream, (window(state), window(layer_perturb), window(keys))
                )
            sites.append(seg_sites)
            stats.append(seg_stats)
            lo += n
        concat = lambda *parts: parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)

        final = None
        if self.final_norm is not None:
            final = lambda z: ends.site("final_norm_out", self.final_norm(ends.site("final_norm_in", z)))
        out = ends.site("stack_out", placement.finish(stream, final, self.consts))
        return (
            out,
            {"layers": jax.tree.map(concat, *sites), "stack": ends.sites},
            {"layers": jax.tree.map(concat, *stats), "stack": ends.stats},
        )
