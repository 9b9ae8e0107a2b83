"""Sublayers (multi-head attention, position-wise FFN), their initializers, and the embeddings.

Sublayers know nothing of placements: a placement decides what goes into them and what happens to
their output. The few placement-owned pieces that live *inside* a sublayer (HybridNorm's per-head
q/k/v norms, NormFormer's head scales and mid-FFN norm, Sub-LN's norm before W_O, nGPT's unit-norm
q/k with their scale s_qk and its FFN scale s_u) are passed in at call time by the block. QK-norm
(`ModelConfig.qk_norm`) is an option of the attention itself, composable with every placement.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.dtypes import upcast
from models.ops import Projection, plain_projection
from models.placements import embedding_init_gain
from models.sites import Taps

NormFn = Callable[[str, jax.Array], jax.Array]

# Projection roles a placement may rescale at init (DeepNorm's β, B2T's L^-1/2, GPT-2's 1/sqrt(2L)).
# W3 is the gated FFN's up projection (activation "swiglu"); it takes W1's gain unless "w3" is named.
ROLES: tuple[str, ...] = ("q", "k", "v", "o", "w1", "w2", "w3")


def project(x: jax.Array, w: jax.Array, projection: Projection) -> jax.Array:
    """x (..., K) @ w (K, N) -> (..., N) by `projection` on the (M, K) rows of x."""
    x2 = x.reshape(-1, x.shape[-1])
    return projection(x2, w).reshape(*x.shape[:-1], w.shape[-1])


# PyTorch's nn.Linear.reset_parameters: kaiming_uniform_(a=sqrt(5)) has gain sqrt(2/(1+5)) and bound
# gain·sqrt(3/fan_in) = 1/sqrt(fan_in); its bias is U(±1/sqrt(fan_in)) as well.
def torch_linear_bound(fan_in: int) -> float:
    """Half-width of nn.Linear's default uniform weight and bias init: 1/sqrt(fan_in)."""
    return 1.0 / math.sqrt(fan_in)


def l2_normalize(z: jax.Array, axis: int = -1, floor: float = 0.0) -> jax.Array:
    """z / max(‖z‖₂, floor) along `axis`, the norm in at least float32, cast back to z's dtype.

    floor = 0 is nGPT's `justnorm` (no ε); x-transformers' QK-norm (`F.normalize`) uses 1e-12.
    """
    z32 = upcast(z)
    length = jnp.sqrt(jnp.sum(jnp.square(z32), axis=axis, keepdims=True))
    return (z32 / (jnp.maximum(length, floor) if floor else length)).astype(z.dtype)


def rms_normalize(z: jax.Array, gain: jax.Array, eps: float) -> jax.Array:
    """g ⊙ z / sqrt(mean(z²) + ε) over the last axis (RMSNorm, as OLMo-2's q/k norm), in float32 at least."""
    z32 = upcast(z)
    ms = jnp.mean(jnp.square(z32), axis=-1, keepdims=True)
    return (z32 * jax.lax.rsqrt(ms + eps) * gain.astype(z32.dtype)).astype(z.dtype)


# x-transformers' l2norm clamp (`F.normalize(t, dim=-1)`, eps 1e-12 on the length).
QK_L2_FLOOR = 1e-12


# fairseq 0.12 MultiheadAttention.reset_parameters: q/k/v Xavier-uniform with gain 1/sqrt(2) (when q, k
# and v have one width, as here), W_O Xavier-uniform with gain 1; the FFN's fc1/fc2 are plain nn.Linear.
FAIRSEQ_XAVIER_GAINS: dict[str, float] = {"q": 2.0**-0.5, "k": 2.0**-0.5, "v": 2.0**-0.5, "o": 1.0}


def init_weight(
    key: jax.Array, fan_in: int, fan_out: int, cfg: ModelConfig, gain: float = 1.0, role: str | None = None
) -> jax.Array:
    """A (fan_in, fan_out) projection drawn by `cfg.init`, times `gain` (a placement's init gain).

    xavier_uniform: U(±gain·sqrt(6/(fan_in+fan_out))) (Glorot & Bengio 2010, gain 1).
    xavier_normal: N(0, gain²·2/(fan_in+fan_out)) (DeepNorm's paper init when gain = β).
    normal: N(0, (0.02·gain)²) (GPT-2).
    torch_default: U(±gain/sqrt(fan_in)), PyTorch's nn.Linear default (kaiming_uniform_, a=sqrt(5)).
    fairseq: fairseq 0.12 by `role` (a key of ROLES): q, k, v U(±gain·(1/√2)·sqrt(6/(fan_in+fan_out))),
        o U(±gain·sqrt(6/(fan_in+fan_out))), w1, w2 (and role None) as torch_default.
    The placement gain multiplies the base draw in every case (std and bounds scale by `gain`).
    """
    dtype = jnp.dtype(cfg.dtype)
    shape = (fan_in, fan_out)
    uniform = lambda limit: jax.random.uniform(key, shape, dtype, -limit, limit)
    if cfg.init == "xavier_uniform":
        return uniform(gain * math.sqrt(6.0 / (fan_in + fan_out)))
    if cfg.init == "xavier_normal":
        return gain * math.sqrt(2.0 / (fan_in + fan_out)) * jax.random.normal(key, shape, dtype)
    if cfg.init == "torch_default" or (cfg.init == "fairseq" and role not in FAIRSEQ_XAVIER_GAINS):
        return uniform(gain * torch_linear_bound(fan_in))
    if cfg.init == "fairseq":
        return uniform(gain * FAIRSEQ_XAVIER_GAINS[role] * math.sqrt(6.0 / (fan_in + fan_out)))
    return 0.02 * gain * jax.random.normal(key, shape, dtype)


# Inits whose nn.Linear biases are random (init_bias); the others' biases are zero.
RANDOM_BIAS_INITS: tuple[str, ...] = ("torch_default", "fairseq")


def init_bias(key: jax.Array | None, fan_in: int, fan_out: int, cfg: ModelConfig, role: str | None = None) -> jax.Array:
    """A (fan_out,) bias (with `cfg.bias`; `key` only for RANDOM_BIAS_INITS); placement gains leave it alone.

    Zero, except where the code being followed keeps nn.Linear's U(±1/sqrt(fan_in)) bias:
    torch_default everywhere, fairseq everywhere but W_O (fairseq zeroes out_proj's bias).
    """
    dtype = jnp.dtype(cfg.dtype)
    if key is not None and (cfg.init == "torch_default" or (cfg.init == "fairseq" and role != "o")):
        limit = torch_linear_bound(fan_in)
        return jax.random.uniform(key, (fan_out,), dtype, -limit, limit)
    return jnp.zeros((fan_out,), dtype)


# Feed-forward activations (ModelConfig.activation): a registry, so the Literal, the CLI and this agree.
ACTIVATION_FUNCTIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    # x·Φ(x) with the erf form of Φ: PyTorch's nn.GELU() and fairseq's `--activation-fn gelu`.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    # 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))): nn.GELU(approximate="tanh"), GPT-2's gelu.
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    # silu(z) = z·σ(z) on the gate W1 x, times the linear W3 x (GATED_ACTIVATIONS): Shazeer 2020.
    "swiglu": jax.nn.silu,
}
# Activations whose hidden is act(W1 x) ⊙ (W3 x): the FFN builds the third matrix W3 for them.
GATED_ACTIVATIONS: frozenset[str] = frozenset({"swiglu"})


class Linear(nnx.Module):
    """y = x W (+ b), W of shape (fan_in, fan_out)."""

    def __init__(
        self, fan_in: int, fan_out: int, cfg: ModelConfig, rngs: nnx.Rngs, gain: float = 1.0, role: str | None = None
    ):
        self.weight = nnx.Param(init_weight(rngs.params(), fan_in, fan_out, cfg, gain, role))
        # Only inits whose bias is random draw a key for it, so the zero-bias inits' streams are unchanged.
        bias_key = rngs.params() if cfg.bias and cfg.init in RANDOM_BIAS_INITS else None
        self.bias = nnx.Param(init_bias(bias_key, fan_in, fan_out, cfg, role)) if cfg.bias else None
        self.projection: Projection = plain_projection  # static; Transformer.use_ops sets it

    def __call__(self, x: jax.Array) -> jax.Array:
        y = project(x, self.weight[...], self.projection)
        return y if self.bias is None else y + self.bias[...]


def fused_projections(linears: tuple[Linear, ...], x: jax.Array) -> tuple[jax.Array, ...]:
    """(x W_1 (+ b_1), x W_2 (+ b_2), ...) from one matmul with [W_1 | W_2 | ...] concatenated.

    The parameters stay separate (one Linear per role, so init gains, optimizer state and probes
    see q, k, v as before); only the call concatenates them. One (B·T, D)·(D, 3D) product instead of
    three (B·T, D)·(D, D) ones, and one weight-gradient product in the backward. Each output column
    is the same dot product as unfused, so the numbers agree to float rounding.
    """
    weight = jnp.concatenate([lin.weight[...] for lin in linears], axis=1)
    y = project(x, weight, linears[0].projection)
    if linears[0].bias is not None:
        y = y + jnp.concatenate([lin.bias[...] for lin in linears], axis=0)
    return tuple(jnp.split(y, len(linears), axis=-1))


def rotary_angles(length: int, head_dim: int, base: float) -> jax.Array:
    """(length, head_dim) float32 angles of RoPE in the rotate-half layout: position t times
    base^(-2i/head_dim) for pair i = 0..head_dim/2-1, the half-width table written twice (Hugging Face
    `Olmo2RotaryEmbedding`: `emb = cat(freqs, freqs)`)."""
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)  # (Dh/2,)
    angle = jnp.arange(length, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.concatenate([angle, angle], axis=-1)


def apply_rotary(z: jax.Array, base: float) -> jax.Array:
    """RoPE on z (B, T, H, Dh): z·cos θ + rotate_half(z)·sin θ, rotate_half(z) = [−z₂, z₁] for the halves
    z = [z₁, z₂] (Su et al. 2021, "RoFormer", arXiv 2104.09864; the rotate-half pairing (i, i + Dh/2)
    of GPT-NeoX and Hugging Face Llama/OLMo 2, not RoFormer's adjacent pairs). Each pair turns by an
    angle linear in the position, so q_t·k_s depends on t − s only. In float32 at least, cast back."""
    z32 = upcast(z)
    angle = rotary_angles(z.shape[1], z.shape[-1], base)[None, :, None, :]  # (1, T, 1, Dh)
    half = z.shape[-1] // 2
    rotated = jnp.concatenate([-z32[..., half:], z32[..., :half]], axis=-1)
    return (z32 * jnp.cos(angle) + rotated * jnp.sin(angle)).astype(z.dtype)


class Attention(nnx.Module):
    """Multi-head attention W_O · concat_h softmax(q_h k_hᵀ / sqrt(d_h)) v_h (Vaswani et al. 2017).

    q = W_Q x; k = W_K m, v = W_V m with m = x (self-attention) or the encoder memory (cross).
    The projections sharing an input run as one fused matmul (`fused_projections`).

    QK-norm (`cfg.qk_norm`), before any placement-owned q/k operation:
        "l2_head": per head q_h ← g_q,h ⊙ q_h/‖q_h‖₂, k_h likewise (length clamped at 1e-12), g of
            shape (H, d_h), 1 at init; logits × `cfg.qk_norm_scale` (fixed) instead of 1/sqrt(d_h).
            x-transformers `qk_norm=True` (its `qk_norm_dim_scale` gains); Dehghani et al. 2023
            (ViT-22B), Wortsman et al. 2023 (arXiv 2309.14322).
        "rms_full": q ← RMSNorm_q(W_Q x), k ← RMSNorm_k(W_K m) over the whole d_model projection
            (all heads together), before the head split; gains of width d_model, ε = cfg.norm_eps;
            logits × 1/sqrt(d_h). OLMo 2 (2025), `Olmo2Attention` in Hugging Face transformers.

    Rotary positions (`cfg.pos == "rotary"`, `apply_rotary`): q and k of self-attention turned by their
    positions after QK-norm and the placement's per-head q/k norms (OLMo 2: q_norm, k_norm, then RoPE),
    before nGPT's unit-norm q/k scaling (NVIDIA/ngpt rotates first). Cross-attention is not rotated:
    its queries and keys index different sequences.
    """

    def __init__(self, cfg: ModelConfig, gains: Mapping[str, float], rngs: nnx.Rngs):
        d = cfg.d_model
        self.heads = cfg.heads
        self.q = Linear(d, d, cfg, rngs, gains.get("q", 1.0), "q")
        self.k = Linear(d, d, cfg, rngs, gains.get("k", 1.0), "k")
        self.v = Linear(d, d, cfg, rngs, gains.get("v", 1.0), "v")
        self.o = Linear(d, d, cfg, rngs, gains.get("o", 1.0), "o")
        self.qk_norm = cfg.qk_norm
        self.qk_norm_scale = cfg.qk_norm_scale
        self.rope_base = cfg.rope_base if cfg.pos == "rotary" else None
        self.qk_eps = cfg.norm_eps
        gain_shape = {"l2_head": (cfg.heads, cfg.head_dim), "rms_full": (d,)}.get(cfg.qk_norm)
        if gain_shape is None:
            self.qk_gain_q = self.qk_gain_k = None
        else:
            self.qk_gain_q = nnx.Param(jnp.ones(gain_shape, jnp.dtype(cfg.dtype)))
            self.qk_gain_k = nnx.Param(jnp.ones(gain_shape, jnp.dtype(cfg.dtype)))

    def __call__(
        self,
        x: jax.Array,  # (B, T, D)
        memory: jax.Array | None,  # (B, S, D) for cross-attention
        *,
        causal: bool,
        taps: Taps,
        name: str,
        qkv_norm: NormFn | None = None,
        head_scale: jax.Array | None = None,  # (H,)
        qk_scale: jax.Array | None = None,  # (H, Dh): q_h, k_h unit-normed, then × qk_scale (nGPT)
        score_scale: float | None = None,  # logits' multiplier, instead of 1/sqrt(Dh) (nGPT: sqrt(Dh))
        pre_out_norm: Callable[[jax.Array], jax.Array] | None = None,  # on concat heads, before W_O (Sub-LN)
    ) -> jax.Array:
        source = x if memory is None else memory
        batch, t_len, d = x.shape
        split = lambda a: a.reshape(a.shape[:-1] + (self.heads, d // self.heads))  # (B, T, H, Dh)
        if memory is None:
            q, k, v = fused_projections((self.q, self.k, self.v), x)
        else:
            q, (k, v) = self.q(x), fused_projections((self.k, self.v), memory)
        if self.qk_norm == "rms_full":  # OLMo-2: the whole projection, before the head split
            q = rms_normalize(q, self.qk_gain_q[...], self.qk_eps)
            k = rms_normalize(k, self.qk_gain_k[...], self.qk_eps)
        q, k, v = split(q), split(k), split(v)
        scale = None  # the default 1/sqrt(Dh) divides (as it always has: the same bits)
        if self.qk_norm == "l2_head":  # x-transformers: per head, learned gain, fixed logit scale
            q = l2_normalize(q, floor=QK_L2_FLOOR) * self.qk_gain_q[...].astype(q.dtype)
            k = l2_normalize(k, floor=QK_L2_FLOOR) * self.qk_gain_k[...].astype(k.dtype)
            scale = self.qk_norm_scale
        if qkv_norm is not None:
            q, k, v = qkv_norm("q", q), qkv_norm("k", k), qkv_norm("v", v)
        if self.rope_base is not None and memory is None:
            q, k = apply_rotary(q, self.rope_base), apply_rotary(k, self.rope_base)
        if qk_scale is not None:
            q = l2_normalize(q) * qk_scale.astype(q.dtype)
            k = l2_normalize(k) * qk_scale.astype(k.dtype)
        if score_scale is not None:
            scale = score_scale
        # The two attention einsums are not projections: a plan's projection op (e.g. a bfloat16
        # product) leaves them in the activation dtype, where XLA's CPU runtime runs every batched
        # transpose of theirs (bfloat16 x bfloat16 -> float32 ones it rejects: "DotThunk").
        scores = jnp.einsum("bthd,bshd->bhts", q, k)
        scores = scores / math.sqrt(d // self.heads) if scale is None else scores * scale
        if causal:
            mask = jnp.tril(jnp.ones((t_len, source.shape[1]), bool))
            scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(upcast(scores), axis=-1)
        entropy = -jnp.sum(probs * jnp.log(jnp.clip(probs, jnp.finfo(probs.dtype).tiny)), axis=-1)
        taps.stat(f"{name}_entropy", jnp.mean(entropy, axis=(0, 2)))  # (H,)
        heads_out = jnp.einsum("bhts,bshd->bthd", probs.astype(v.dtype), v)  # (B, T, H, Dh)
        if head_scale is not None:
            # NormFormer's paper form: scale each head before W_O (fairseq scales after W_O).
            heads_out = heads_out * head_scale[:, None].astype(heads_out.dtype)
        heads_out = heads_out.reshape(batch, t_len, d)
        if pre_out_norm is not None:
            heads_out = pre_out_norm(heads_out)
        return self.o(heads_out)


class FeedForward(nnx.Module):
    """FF(x) = W2 · act(W1 x + b1) + b2, with an optional norm on the hidden (NormFormer's LN_ffn,
    Sub-LN's ffn_layernorm) and an optional scale on the pre-activation (nGPT's s_u).

    A gated activation (GATED_ACTIVATIONS, "swiglu") has hidden = act(W1 x + b1) ⊙ (W3 x + b3):
    SwiGLU, FF(x) = W2 (silu(W1 x) ⊙ W3 x) (Shazeer 2020; Hugging Face `Olmo2MLP`: gate_proj = W1,
    up_proj = W3, down_proj = W2). W1 and W3 are both (d_model, d_ff): d_ff is the hidden width as
    given (intermediate_size), so the gate adds d_model·d_ff parameters. W3 takes W1's placement gain
    (both read the FFN input) unless a placement names "w3"; the mid norm and the scale act as above,
    the scale on the gate's pre-activation only. W3 is drawn after W2, so the ungated FFN's draws stay.
    """

    def __init__(self, cfg: ModelConfig, gains: Mapping[str, float], rngs: nnx.Rngs):
        self.w1 = Linear(cfg.d_model, cfg.d_ff, cfg, rngs, gains.get("w1", 1.0), "w1")
        self.w2 = Linear(cfg.d_ff, cfg.d_model, cfg, rngs, gains.get("w2", 1.0), "w2")
        self.act = ACTIVATION_FUNCTIONS[cfg.activation]
        if cfg.activation in GATED_ACTIVATIONS:
            self.w3 = Linear(cfg.d_model, cfg.d_ff, cfg, rngs, gains.get("w3", gains.get("w1", 1.0)), "w3")
        else:
            self.w3 = None

    def __call__(
        self,
        x: jax.Array,
        mid_norm: Callable[[jax.Array], jax.Array] | None = None,
        hidden_scale: jax.Array | None = None,  # (d_ff,)
    ) -> jax.Array:
        if self.w3 is None:
            pre, up = self.w1(x), None
        else:  # gate and up projection read the same input: one fused matmul
            pre, up = fused_projections((self.w1, self.w3), x)
        if hidden_scale is not None:
            pre = pre * hidden_scale.astype(pre.dtype)
        hidden = self.act(pre)
        if up is not None:
            hidden = hidden * up
        if mid_norm is not None:
            hidden = mid_norm(hidden)
        return self.w2(hidden)


def sinusoidal_positions(length: int, d: int, dtype: jnp.dtype) -> jax.Array:
    """Fixed positional encodings (Vaswani et al. 2017), (length, d), sin in the first half (fairseq)."""
    half = d // 2
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    angle = jnp.arange(length, dtype=jnp.float32)[:, None] * freq[None, :]
    table = jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)
    if d % 2:
        table = jnp.pad(table, ((0, 0), (0, 1)))
    return table.astype(dtype)


class Embedding(nnx.Module):
    """Token embedding × scale (+ positions); shared by encoder and decoder of an encdec model.

    The table is drawn N(0, embed_std²) and multiplied once at init by the placement's embedding gain
    (`models.placements.embedding_init_gain`, T-Fixup's (9N)^(-1/4)); positions are not. "rotary"
    positions live in the attention (`apply_rotary`), "none" and "rotary" add nothing here.
    """

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        std = cfg.embed_std if cfg.embed_std is not None else cfg.d_model**-0.5
        self.scale = cfg.embed_scale if cfg.embed_scale is not None else math.sqrt(cfg.d_model)
        table = std * jax.random.normal(rngs.params(), (cfg.vocab, cfg.d_model), dtype)
        gain = embedding_init_gain(cfg)
        self.table = nnx.Param(table if gain == 1.0 else table * jnp.asarray(gain, dtype))
        self.pos_kind = cfg.pos
        if cfg.pos == "learned":
            self.pos = nnx.Param(std * jax.random.normal(rngs.params(), (cfg.max_len, cfg.d_model), dtype))
        else:
            self.pos = None

    def __call__(self, tokens: jax.Array) -> jax.Array:  # (B, T) -> (B, T, D)
        x = self.table[...][tokens] * self.scale
        if self.pos_kind == "learned":
            x = x + self.pos[...][: tokens.shape[1]]
        elif self.pos_kind == "sinusoidal":
            x = x + sinusoidal_positions(tokens.shape[1], x.shape[-1], x.dtype)
        return x
