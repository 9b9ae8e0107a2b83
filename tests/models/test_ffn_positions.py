"""The gated FFN (activation="swiglu") and rotary positions (pos="rotary") against numpy restatements.

SwiGLU: FF(x) = W2 (silu(W1 x + b1) ⊙ (W3 x + b3)) + b2, silu(z) = z/(1 + e^(−z)) (Shazeer 2020;
Hugging Face `Olmo2MLP`). RoPE: each head's dimension pairs (i, i + d_h/2) turn by the angle
t·θ^(−2i/d_h) at position t (Su et al. 2021; the rotate-half layout of Hugging Face OLMo 2), so a
rotated query and key meet with a dot product that depends on their offset only. Expected values are
computed here in float64 from the model's parameters; nothing is taken from models.layers but the
modules under test.
"""

from __future__ import annotations

import math

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import ModelConfig
from models.layers import Attention, Embedding, FeedForward, apply_rotary
from models.placements import ngpt_renormalize
from models.sites import Taps

D, HEADS, D_FF, T, B = 16, 2, 32, 8, 2
TOL = dict(rtol=2e-5, atol=2e-5)


def _np_silu(z: np.ndarray) -> np.ndarray:
    return z / (1.0 + np.exp(-z))


def _np(a: jax.Array) -> np.ndarray:
    return np.asarray(a, np.float64)


def _np_rope(z: np.ndarray, base: float) -> np.ndarray:
    """z (B, T, H, Dh) with pair (i, i + Dh/2) at position t turned by t·base^(−2i/Dh), written pair by pair."""
    out = np.array(z, np.float64)
    half = z.shape[-1] // 2
    for t in range(z.shape[1]):
        for i in range(half):
            angle = t * base ** (-2.0 * i / z.shape[-1])
            c, s = math.cos(angle), math.sin(angle)
            a, b = z[:, t, :, i], z[:, t, :, i + half]
            out[:, t, :, i] = a * c - b * s
            out[:, t, :, i + half] = b * c + a * s
    return out


@pytest.fixture
def eager():
    with jax.disable_jit():
        yield


# ---------------------------------------------------------------------------------------------
# SwiGLU
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_matches_numpy(bias: bool, eager):
    # torch_default init draws random biases, so b1, b3, b2 all enter the restatement.
    cfg = ModelConfig(d_model=D, heads=HEADS, d_ff=D_FF, activation="swiglu", bias=bias, init="torch_default")
    ffn = FeedForward(cfg, {}, nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(B, T, D)).astype(np.float32)
    w1, w2, w3 = (_np(m.weight[...]) for m in (ffn.w1, ffn.w2, ffn.w3))
    assert w1.shape == w3.shape == (D, D_FF) and w2.shape == (D_FF, D)  # d_ff is the hidden width as given
    b1, b2, b3 = ((_np(m.bias[...]) if bias else 0.0) for m in (ffn.w1, ffn.w2, ffn.w3))
    xd = x.astype(np.float64)
    expected = (_np_silu(xd @ w1 + b1) * (xd @ w3 + b3)) @ w2 + b2
    np.testing.assert_allclose(_np(ffn(jnp.asarray(x))), expected, **TOL)
    assert not np.allclose(w1, w3)  # the gate and the up projection are separate draws


def test_ungated_ffn_draws_are_unchanged_and_w3_takes_w1s_gain():
    # W3 is drawn after W2: a relu model's W1, W2 equal the swiglu model's; a placement gain on W1
    # (DeepNorm's β) reaches W3 as well.
    relu = FeedForward(ModelConfig(d_model=D, heads=HEADS, d_ff=D_FF), {}, nnx.Rngs(0))
    gated = FeedForward(ModelConfig(d_model=D, heads=HEADS, d_ff=D_FF, activation="swiglu"), {}, nnx.Rngs(0))
    assert relu.w3 is None
    np.testing.assert_array_equal(relu.w1.weight[...], gated.w1.weight[...])
    np.testing.assert_array_equal(relu.w2.weight[...], gated.w2.weight[...])
    cfg = ModelConfig(d_model=D, heads=HEADS, d_ff=D_FF, activation="swiglu")
    scaled = FeedForward(cfg, {"w1": 0.25}, nnx.Rngs(0))
    np.testing.assert_allclose(scaled.w3.weight[...], 0.25 * gated.w3.weight[...], rtol=1e-6)


def test_gated_hidden_is_what_the_mid_norm_reads(eager):
    # The block's mid-norm slot (NormFormer, Sub-LN) taps its input as the `mlp_mid_norm_in` site: with
    # swiglu that input is the gated hidden silu(W1 x) ⊙ W3 x, and W2 reads the norm's output.
    cfg = ModelConfig(d_model=D, heads=HEADS, d_ff=D_FF, activation="swiglu")
    ffn = FeedForward(cfg, {}, nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(B, T, D)).astype(np.float32)
    seen = []
    out = ffn(jnp.asarray(x), mid_norm=lambda h: seen.append(h) or 2.0 * h)
    xd = x.astype(np.float64)
    w1, w2, w3 = (_np(m.weight[...]) for m in (ffn.w1, ffn.w2, ffn.w3))
    hidden = _np_silu(xd @ w1) * (xd @ w3)
    np.testing.assert_allclose(_np(seen[0]), hidden, **TOL)
    np.testing.assert_allclose(_np(out), (2.0 * hidden) @ w2, **TOL)


def test_ngpt_renormalizes_w3_along_the_embedding_axis():
    # nGPT's weights are unit vectors along the embedding axis; W3 reads the stream as W1 does, so its
    # renormalization (applied at construction and after every update) makes each of its d_ff
    # columns (the fan-in axis of the (d_model, d_ff) matrix, per layer) of length 1.
    cfg = ModelConfig(placement="ngpt", activation="swiglu", d_model=D, heads=HEADS, d_ff=D_FF, vocab=16, layers=2)
    raw = np.random.default_rng(6).normal(size=(2, D, D_FF)).astype(np.float32)
    params = {"stacks": {"decoder": {"layers": {"mlp": {"w3": {"weight": jnp.asarray(raw)}}}}}}
    w3 = _np(ngpt_renormalize(cfg, params)["stacks"]["decoder"]["layers"]["mlp"]["w3"]["weight"])
    np.testing.assert_allclose(w3, raw / np.linalg.norm(raw, axis=-2, keepdims=True), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base", [10000.0, 500000.0])
def test_rotary_matches_numpy(base: float, eager):
    z = np.random.default_rng(2).normal(size=(B, T, HEADS, 8)).astype(np.float32)
    np.testing.assert_allclose(_np(apply_rotary(jnp.asarray(z), base)), _np_rope(z, base), **TOL)


def test_rotary_dot_products_depend_on_the_offset_only(eager):
    # One query vector q and one key vector k placed at every position: after RoPE the score matrix
    # S[t, s] = R_t q · R_s k is constant along each diagonal t − s (a Toeplitz matrix), and the
    # rotation keeps lengths. Without rotation every entry would be equal, so the test sees the angles.
    rng = np.random.default_rng(3)
    q, k = rng.normal(size=8), rng.normal(size=8)
    length = 12
    tile = lambda v: jnp.asarray(np.broadcast_to(v, (1, length, 1, 8)), jnp.float32)
    rq, rk = _np(apply_rotary(tile(q), 10000.0))[0, :, 0], _np(apply_rotary(tile(k), 10000.0))[0, :, 0]
    scores = rq @ rk.T
    for offset in range(-length + 1, length):
        diagonal = np.diagonal(scores, offset)
        np.testing.assert_allclose(diagonal, diagonal[0], rtol=1e-5, atol=1e-5, err_msg=f"offset {offset}")
    assert np.ptp(np.diagonal(scores, 0)) < 1e-4 < np.ptp(scores[0])
    np.testing.assert_allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(q), rtol=1e-6)


def _np_attention(x: np.ndarray, attn: Attention, base: float | None, causal: bool) -> np.ndarray:
    """softmax(q_h k_hᵀ/sqrt(d_h)) v_h per head, q, k rotated when `base` is given, then W_O."""
    wq, wk, wv, wo = (_np(m.weight[...]) for m in (attn.q, attn.k, attn.v, attn.o))
    split = lambda a: a.reshape(B, T, HEADS, D // HEADS)
    q, k, v = split(x @ wq), split(x @ wk), split(x @ wv)
    if base is not None:
        q, k = _np_rope(q, base), _np_rope(k, base)
    scores = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D // HEADS)
    if causal:
        scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bhts,bshd->bthd", probs, v).reshape(B, T, D) @ wo


def test_rotary_self_attention_matches_numpy_and_cross_attention_is_not_rotated(eager):
    cfg = ModelConfig(d_model=D, heads=HEADS, d_ff=D_FF, pos="rotary", rope_base=500000.0)
    attn = Attention(cfg, {}, nnx.Rngs(0))
    x = np.random.default_rng(4).normal(size=(B, T, D)).astype(np.float32)
    xd = x.astype(np.float64)
    out = attn(jnp.asarray(x), None, causal=True, taps=Taps(), name="attn")
    np.testing.assert_allclose(_np(out), _np_attention(xd, attn, 500000.0, causal=True), **TOL)
    cross = attn(jnp.asarray(x), jnp.asarray(x), causal=False, taps=Taps(), name="cross")
    np.testing.assert_allclose(_np(cross), _np_attention(xd, attn, None, causal=False), **TOL)


def test_rotary_adds_nothing_to_the_embeddings(eager):
    embed = Embedding(ModelConfig(d_model=D, heads=HEADS, d_ff=D_FF, vocab=16, pos="rotary"), nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, 16, (B, T)), jnp.int32)
    expected = _np(embed.table[...])[np.asarray(tokens)] * math.sqrt(D)
    np.testing.assert_allclose(_np(embed(tokens)), expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(activation="swish"), "valid choices: relu, gelu, gelu_tanh, swiglu"),
        (dict(pos="rope"), "unknown pos 'rope'; valid choices: sinusoidal, learned, none, rotary"),
        (dict(pos="rotary", d_model=6, heads=2), "d_model/heads must be even"),
        (dict(rope_base=0.5), "rope_base must be > 1.0, got 0.5"),
        (dict(rope_base=float("inf")), "rope_base must be a finite number"),
    ],
)
def test_bad_options_name_the_value_and_the_choices(changes: dict, message: str):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig(**changes)
