"""One Transformer layer: its sublayers, the norm slots its placement declares, and the wiring.

The block builds exactly `placement.norm_slots[kind]` for each sublayer kind and the per-layer
parameters of `placement.layer_params`; it never reads the placement's name. What it calls is the
wiring mapping it is given (a placement may use different wirings in different layer segments).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.layers import Attention, FeedForward
from models.norms import make_norm
from models.placements import PLACEMENTS, Consts, Stream, Wire, residual_sublayers
from models.sites import Taps
from models.spec import StackSpec

# Stream site after each sublayer kind (TransformerLens names; resid_mid_cross for the encdec decoder).
RESID_AFTER = {"attn": "resid_mid", "cross": "resid_mid_cross", "mlp": "resid_post"}


def sublayer_input_site(kinds: tuple[str, ...], kind: str) -> str:
    """The stream site entering sublayer `kind` of a layer whose sublayers are `kinds`."""
    index = kinds.index(kind)
    return "resid_pre" if index == 0 else RESID_AFTER[kinds[index - 1]]


def stream_site_name(key: str, site: str) -> str:
    """Site name of a stream entry: `x` is the residual stream, others are prefixed (`dual_resid_pre`)."""
    return site if key == "x" else f"{key}_{site}"


def _slot_width(cfg: ModelConfig, slot: str) -> int:
    return {"q": cfg.head_dim, "k": cfg.head_dim, "v": cfg.head_dim, "mid": cfg.d_ff}.get(slot, cfg.d_model)


def _init_gains(cfg: ModelConfig, spec: StackSpec) -> dict[str, float]:
    """{role: gain} for every sublayer, and {"kind.role": gain} for one sublayer kind only (Sub-LN
    leaves the cross-attention's projections alone)."""
    gains = dict(PLACEMENTS[spec.placement].init_gains(cfg, spec))
    if cfg.gpt2_scaled_init:
        # GPT-2: residual-output projections × 1/sqrt(N_res), N_res = residual sublayers of the stack
        # (2L = nanoGPT's c_proj rule; 3M for an encdec decoder, whose cross-attention adds a branch).
        qualified = [key for key in gains if "." in key and key.split(".")[1] in ("o", "w2")]
        for role in ("o", "w2", *qualified):
            gains[role] = gains.get(role, 1.0) / math.sqrt(residual_sublayers(spec))
    return gains


def _kind_gains(gains: Mapping[str, float], kind: str) -> dict[str, float]:
    """The gains of sublayer `kind`: its "kind.role" entries over the plain "role" ones."""
    plain = {role: gain for role, gain in gains.items() if "." not in role}
    return {**plain, **{key.split(".")[1]: gain for key, gain in gains.items() if key.split(".")[0] == kind}}


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, spec: StackSpec, rngs: nnx.Rngs):
        placement = PLACEMENTS[spec.placement]
        gains = _init_gains(cfg, spec)
        self.kinds = spec.sublayers
        self.causal = spec.causal
        self.dropout = cfg.dropout
        self.attn = Attention(cfg, _kind_gains(gains, "attn"), rngs)
        self.cross = Attention(cfg, _kind_gains(gains, "cross"), rngs) if spec.cross else None
        self.mlp = FeedForward(cfg, _kind_gains(gains, "mlp"), rngs)
        self.norms = nnx.Dict(
            {
                kind: nnx.Dict(
                    {slot: make_norm(_slot_width(cfg, slot), cfg, rngs) for slot in placement.norm_slots[kind]}
                )
                for kind in self.kinds
            }
        )
        self.extra = nnx.Dict(
            {
                group: nnx.Dict({name: nnx.Param(value) for name, value in values.items()})
                for group, values in placement.layer_params(cfg, spec).items()
            }
        )

    def __call__(
        self,
        stream: Stream,
        *,
        wiring: Mapping[str, Wire],
        consts: Consts,
        memory: jax.Array | None,
        taps: Taps,
        dropout_key: jax.Array | None = None,
    ) -> Stream:
        stream = _tap_stream(taps, stream, "resid_pre")
        layer_input = stream["x"]
        for index, kind in enumerate(self.kinds):
            key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
            sub = _Sublayer(self, kind, index == len(self.kinds) - 1, layer_input, memory, taps, consts, key)
            stream = wiring[kind](sub, stream)
            stream = _tap_stream(taps, stream, RESID_AFTER[kind])
        return stream


def _tap_stream(taps: Taps, stream: Stream, site: str) -> Stream:
    return {key: taps.site(stream_site_name(key, site), value) for key, value in stream.items()}


class _Sublayer:
    """What a wiring function may do inside one sublayer (see models.placements.Sub)."""

    def __init__(
        self,
        block: Block,
        kind: str,
        is_last: bool,
        layer_input: jax.Array,
        memory: jax.Array | None,
        taps: Taps,
        consts: Consts,
        dropout_key: jax.Array | None,
    ):
        self.block, self.kind, self.is_last = block, kind, is_last
        self.layer_input, self.memory, self.taps = layer_input, memory, taps
        self.consts, self.dropout_key = consts, dropout_key
        self.slots = block.norms[kind]

    def site(self, name: str, value: jax.Array) -> jax.Array:
        return self.taps.site(name, value)

    def norm(self, slot: str, z: jax.Array, step: int = 1) -> jax.Array:
        tag = f"{self.kind}_{slot}" if step == 1 else f"{self.kind}_{slot}{step}"
        z = self.taps.site(f"{tag}_norm_in", z)
        return self.taps.site(f"{tag}_norm_out", self.slots[slot](z))

    def param(self, name: str) -> jax.Array:
        for group in (self.kind, "layer"):
            if group in self.block.extra and name in self.block.extra[group]:
                return self.block.extra[group][name][...]
        if name in self.consts:
            return self.consts[name]
        raise KeyError(f"placement parameter {name!r} is not declared for sublayer {self.kind!r}")

    def const(self, name: str) -> Any:
        return self.consts[name]

    def branch(
        self,
        h: jax.Array,
        *,
        qk_scale: jax.Array | None = None,
        score_scale: float | None = None,
        hidden_scale: jax.Array | None = None,
    ) -> jax.Array:
        block, kind = self.block, self.kind
        if kind == "mlp":
            mid = (lambda z: self.norm("mid", z)) if "mid" in self.slots else None
            out = block.mlp(h, mid_norm=mid, hidden_scale=hidden_scale)
        else:
            attention = block.attn if kind == "attn" else block.cross
            qkv = (lambda slot, z: self.norm(slot, z)) if "q" in self.slots else None
            inner = (lambda z: self.norm("inner", z)) if "inner" in self.slots else None
            extra = block.extra[kind] if kind in block.extra else {}
            head_scale = extra["head_scale"][...] if "head_scale" in extra else None
            out = attention(
                h,
                self.memory if kind == "cross" else None,
                causal=block.causal and kind == "attn",
                taps=self.taps,
                name=kind,
                qkv_norm=qkv,
                head_scale=head_scale,
                qk_scale=qk_scale,
                score_scale=score_scale,
                pre_out_norm=inner,
            )
        if self.dropout_key is not None and block.dropout > 0:
            keep = jax.random.bernoulli(self.dropout_key, 1.0 - block.dropout, out.shape)
            out = jnp.where(keep, out / (1.0 - block.dropout), jnp.zeros_like(out))
        return self.taps.site(f"{kind}_out", out)
