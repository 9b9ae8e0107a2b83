"""A layer stack: L blocks created with `nnx.vmap` (parameters with a leading layer axis), run by the
stack's layer loop (`models.ops.LayerLoop`: one `lax.scan` by default; an execution plan may supply
another, e.g. an unrolled loop, analysis.execution).

The loop runs over the split NNX state (`nnx.split` → slice → loop body with `nnx.merge`), which is
what `nnx.scan` does internally; working on the state directly lets placements with layer segments
(Mix-LN: Post-LN layers, then Pre-LN layers) loop over each slice of the same stacked parameters with
its own wiring. Per-layer perturbations enter as the loop's per-layer inputs and per-layer sites leave
as its stacked outputs, so each site comes back as an (L, ...) array.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from models.block import Block
from models.config import ModelConfig
from models.norms import make_norm
from models.ops import LayerLoop, ScanLoop
from models.placements import PLACEMENTS
from models.sites import Taps
from models.spec import StackSpec


class Stack(nnx.Module):
    def __init__(self, cfg: ModelConfig, spec: StackSpec, rngs: nnx.Rngs):
        placement = PLACEMENTS[spec.placement]
        self.spec = spec
        self.layer_loop: LayerLoop = ScanLoop()  # static, part of the graphdef; Transformer.use_ops sets it
        self.consts = dict(placement.constants(cfg, spec))
        self.layer_consts = dict(placement.layer_constants(cfg, spec))  # {name: one float per layer}
        self.dtype = cfg.dtype
        self.segments = tuple((wiring, n) for wiring, n in placement.layer_segments(cfg, spec))

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
        layer_consts = {k: jnp.asarray(v, jnp.dtype(self.dtype)) for k, v in self.layer_consts.items()}  # (L,)
        sites, stats, lo = [], [], 0
        for wiring, n in self.segments:
            window = lambda tree: None if tree is None else jax.tree.map(lambda a: a[lo : lo + n], tree)

            def body(carry, xs, wiring=wiring):
                layer_state, layer_perturb_l, key, consts_l = xs
                taps = Taps(layer_perturb_l, record)
                block = nnx.merge(graphdef, layer_state)
                consts = {**self.consts, **consts_l}
                carry = block(carry, wiring=wiring, consts=consts, memory=memory, taps=taps, dropout_key=key)
                layer_stats = taps.stats
                if summarize is not None and record:
                    layer_stats = {**layer_stats, "summary": summarize(taps.sites)}
                return carry, (taps.sites, layer_stats)

            xs = (window(state), window(layer_perturb), window(keys), window(layer_consts))
            stream, (seg_sites, seg_stats) = self.layer_loop(body, stream, xs, n, self.spec.layers)
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
