"""The Transformer: embeddings, one or two scanned stacks, and an output head.

`model(tokens)` / `model(src, tgt)` return logits; `model.forward(...)` also returns every probe
site (with optional zero perturbations added) and attention statistics, which is what the probes
differentiate. `ops` (models.ops) are the layer loop and projection product the model runs with:
an execution plan's choice (analysis.execution), not the model's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.dtypes import upcast
from models.layers import Embedding, Linear, project
from models.ops import ModelOps
from models.placements import PLACEMENTS
from models.stack import Stack


class ForwardOutput(NamedTuple):
    logits: jax.Array  # (B, T, vocab), float32 at least
    sites: dict  # {stack: {"layers": {site: (L, B, T, ...)}, "stack": {site: (B, T, D)}}}
    stats: dict  # {stack: {"layers": {stat: (L, ...), "summary": {..} with `summarize`}, "stack": {}}}


def validate_tokens(cfg: ModelConfig, *inputs: Any) -> None:
    """Raise ValueError for a wrong number of inputs, non-2D or over-long sequences, or token ids out
    of [0, vocab). Values are checked only when concrete (not under jit tracing); shapes always."""
    expected = 2 if cfg.arch == "encdec" else 1
    if len(inputs) != expected:
        raise ValueError(
            f"arch={cfg.arch!r} takes {expected} token array(s) "
            f"({'src, tgt' if expected == 2 else 'tokens'}), got {len(inputs)}"
        )
    for name, tokens in zip(("src", "tgt") if expected == 2 else ("tokens",), inputs):
        shape = np.shape(tokens)
        if len(shape) != 2:
            raise ValueError(f"{name} must be an int array of shape (batch, length), got shape {shape}")
        if shape[1] > cfg.max_len:
            raise ValueError(f"{name} has length {shape[1]} > max_len={cfg.max_len}")
        dtype = tokens.dtype if isinstance(tokens, jax.core.Tracer) else np.asarray(tokens).dtype
        if not jnp.issubdtype(dtype, jnp.integer):
            raise ValueError(f"{name} must hold integer token ids, got dtype {dtype}")
        if not isinstance(tokens, jax.core.Tracer) and shape[0] * shape[1] > 0:
            values = np.asarray(tokens)
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= cfg.vocab:
                bad = high if high >= cfg.vocab else low
                raise ValueError(f"{name} holds token id {bad}; valid ids are 0..{cfg.vocab - 1} (vocab={cfg.vocab})")


def after_update(cfg: ModelConfig) -> Callable[[Any], Any] | None:
    """params -> params: the post-update steps its stacks' placements declare (`Placement.after_update`,
    e.g. nGPT's renormalization), each once, in stack order; None when none declares one. params is
    the model's nnx.State (a training state's `params`). The model applies it once at construction."""
    hooks = []
    for spec in cfg.stacks():
        hook = PLACEMENTS[spec.placement].after_update
        if hook is not None and hook not in hooks:
            hooks.append(hook)
    if not hooks:
        return None

    def apply(params: Any) -> Any:
        for hook in hooks:
            params = hook(cfg, params)
        return params

    return apply


class Transformer(nnx.Module):
    """Encoder, decoder-only or encoder-decoder Transformer of one placement (see ModelConfig)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, ops: ModelOps = ModelOps()):
        self.cfg = cfg
        self.embed = Embedding(cfg, rngs)
        self.stacks = nnx.Dict({spec.name: Stack(cfg, spec, rngs) for spec in cfg.stacks()})
        if cfg.tie_embeddings:
            self.head = None
        else:
            std = cfg.d_model**-0.5
            self.head = nnx.Param(
                std * jax.random.normal(rngs.params(), (cfg.d_model, cfg.vocab), jnp.dtype(cfg.dtype))
            )
        # A learned per-token logit scale (nGPT's s_z), declared by the placement feeding the head.
        logit_scale = PLACEMENTS[cfg.stacks()[-1].placement].logit_scale
        if logit_scale is None:
            self.logit_scale, self.logit_multiplier = None, 1.0
        else:
            stored, self.logit_multiplier = logit_scale(cfg)
            self.logit_scale = nnx.Param(jnp.full((cfg.vocab,), stored, jnp.dtype(cfg.dtype)))
        self.use_ops(ops)
        hook = after_update(cfg)
        if hook is not None:  # e.g. nGPT's weights start unit-norm, as after every update
            nnx.update(self, hook(nnx.state(self)))

    def use_ops(self, ops: ModelOps) -> None:
        """Run every stack with `ops.layer_loop` and every projection (and the output head) with
        `ops.projection` from now on. Parameters are untouched; the graphdef changes."""
        if not isinstance(ops, ModelOps):
            raise TypeError(f"ops must be a models.ModelOps, got {type(ops).__name__}")
        self.ops = ops
        for _, module in nnx.iter_modules(self):
            if isinstance(module, Linear):
                module.projection = ops.projection
            elif isinstance(module, Stack):
                module.layer_loop = ops.layer_loop

    def __call__(self, *inputs: jax.Array) -> jax.Array:
        """Logits (B, T, vocab) for `tokens` (encoder/decoder) or `src, tgt` (encdec)."""
        return self.forward(*inputs, record=False).logits

    def forward(
        self,
        *inputs: jax.Array,
        perturb: Mapping[str, Any] | None = None,
        record: bool = True,
        dropout_key: jax.Array | None = None,
        summarize: Callable[[dict], dict] | None = None,
    ) -> ForwardOutput:
        """Logits plus probe sites; `perturb` mirrors `sites` (zeros) and is added at each site;
        `summarize` runs on each layer's sites inside the layer (models.stack.Stack)."""
        validate_tokens(self.cfg, *inputs)
        perturb = perturb or {}
        keys = (
            dict(zip(self.stacks, (None,) * 2))
            if dropout_key is None
            else dict(zip(("encoder", "decoder"), jax.random.split(dropout_key)))
        )
        sites, stats, memory = {}, {}, None
        if "encoder" in self.stacks:
            memory, sites["encoder"], stats["encoder"] = self.stacks["encoder"](
                self.embed(inputs[0]),
                perturb=perturb.get("encoder"),
                record=record,
                dropout_key=keys.get("encoder"),
                summarize=summarize,
            )
            out = memory
        if "decoder" in self.stacks:
            out, sites["decoder"], stats["decoder"] = self.stacks["decoder"](
                self.embed(inputs[-1]),
                memory=memory,
                perturb=perturb.get("decoder"),
                record=record,
                dropout_key=keys.get("decoder"),
                summarize=summarize,
            )
        head = self.embed.table[...].T if self.head is None else self.head[...]
        logits = project(out, head, self.ops.projection)
        if self.logit_scale is not None:
            logits = logits * (self.logit_scale[...] * self.logit_multiplier).astype(logits.dtype)
        return ForwardOutput(upcast(logits), sites, stats)
