"""Every placement's block against an independent restatement of its equation (docs/placements.md).

The standard: each placement's block equals a hand-written restatement of its paper equation (plain
jax.numpy on the same parameters), to float32 tolerance, for one and two layers, encoder and decoder,
and the decoder of an encoder-decoder (with cross-attention; the encoder stack is checked too).

Independence: no expected value comes from models.placements / block / stack / layers / norms
(the model is only built, run, and its parameters read; models.placements' constant functions are
imported only to be tested against the documented tables). The reference reads the raw parameter arrays out of the
model state and restates LayerNorm, multi-head attention (one head at a time), the FFN, the
embedding and every placement's wiring from docs/placements.md. All parameters are
randomized first (gains and biases away from 1/0, Admin's ω, ReZero's α ≠ 0, NormFormer's head
scales, ...) so a norm in the wrong slot or a wrong constant changes the output.

The second half checks the initialization constants against the tables of docs/placements.md: DeepNorm's (α, β)
and its β-scaled Xavier init, Admin's constant ω and profiled ω (the profiling fixed point,
recomputed from the final model's activations), B2T's L^-1/2 rescale and GPT-2's 1/sqrt(2L).
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import PLACEMENTS, ModelConfig, build_model
from models.build import PROFILE_BATCH, profile_batch
from models.placements import admin_constant_omega, deepnorm_constants
from models.transformer import Transformer
from tests.models.test_placements_ngpt_subln import LAYERS as NGPT_SUBLN_REFERENCES

# Small sizes. The forward tests run op by op (fixture `eager`) and every distinct op shape
# compiles once, so all cases share these; the Admin profiling batch is PROFILE_BATCH × max_len,
# hence the batch size here and max_len=LENGTH in the profiled config. Model construction compiles
# its random draws per (layers, width), so the init tests use width 16 or 128 and depths 2 and 3.
D_MODEL, HEADS, D_FF, VOCAB = 16, 2, 32, 32
BATCH, LENGTH = PROFILE_BATCH, 6
EPS = 1e-5  # passed as norm_eps; the reference's LN uses it explicitly

# Model vs reference, both float32, the same math by different routes (fused einsums vs one head
# at a time): max |diff| / rms(reference) observed over all 75 cases is 2.9e-6 (LN divides by σ,
# softmax exponentiates; a few hundred ulps over two layers). 2e-5 leaves a ~7x margin; a wrong
# slot, constant or order of operations moves the outputs by orders of magnitude more (each of 14
# deliberate mutations of the reference, e.g. B2T's x before every LN, rSkip with 2 steps, NormFormer's
# head scale after W_O, no causal mask, fails).
REF_TOL = 2e-5
# Same random draws multiplied by a constant gain (B2T rescale, GPT-2 scaling): rounding only,
# relative to the init's range (Xavier-uniform computes limit·(2u − 1) as u·2·limit − limit, so
# entries near 0 carry an absolute error of a few ulps of the limit).
GAIN_TOL = 1e-6
# Admin ω recomputed from a forward pass vs the ω profiled inside build_model: float32 variances
# of 8x6x16 elements summed by different routes (float64 here).
OMEGA_RTOL = 1e-4
# Sample std of n i.i.d. entries: SE(s)/σ ≈ sqrt((κ − 1)/(4n)) with kurtosis κ ≤ 3 (normal 3,
# uniform 1.8), i.e. at most sqrt(1/(2n)). Six standard errors: false-alarm rate ~1e-9.
STD_SIGMAS = 6.0

# Placement options that make every constant visible (both Mix-LN segments at L=2, a λ ≠ 1, three
# rSkip steps, a ResiDual dual scale ≠ 1).
OPTIONS: dict[str, Any] = dict(mix_post_fraction=0.5, rsln_steps=3, skip_lambda=1.7, residual_scale=0.5)
# (arch, layers per stack)
CASES = [("encoder", 1), ("encoder", 2), ("decoder", 1), ("decoder", 2), ("encdec", 2)]


def _config(placement: str, arch: str, layers: int) -> ModelConfig:
    return ModelConfig(
        arch=arch,
        placement=placement,
        layers=layers,
        d_model=D_MODEL,
        heads=HEADS,
        d_ff=D_FF,
        vocab=VOCAB,
        pos="none",
        activation="relu",
        norm="layernorm",
        norm_eps=EPS,
        # NormFormer's learnable λ_res: on at L=2 (randomized and checked), off at L=1 (λ_res = 1).
        normformer_resid_scale=layers == 2,
        **OPTIONS,
    )


# ---------------------------------------------------------------------------------------------
# Reference primitives (docs/placements.md, notation), plain jax.numpy.
# ---------------------------------------------------------------------------------------------
def layer_norm(z: jax.Array, p: dict) -> jax.Array:
    """LN(z) = γ ⊙ (z − μ(z)) / sqrt(σ²(z) + ε) + β over the last axis (biased σ², ε inside the root)."""
    mu = jnp.mean(z, axis=-1, keepdims=True)
    var = jnp.mean((z - mu) ** 2, axis=-1, keepdims=True)
    return p["gain"] * (z - mu) / jnp.sqrt(var + EPS) + p["bias"]


def attention(
    p: dict,
    h: jax.Array,
    source: jax.Array,
    *,
    causal: bool,
    qkv_norms: dict | None = None,
    head_scale: jax.Array | None = None,
) -> jax.Array:
    """W_O · concat_h softmax(q_h k_hᵀ / sqrt(d_h)) v_h, q = W_Q h, k = W_K s, v = W_V s (x @ W).

    Written head by head (head i = columns i·d_h … (i+1)·d_h of the projections). `qkv_norms`:
    HybridNorm's per-head norms of q, k, v; `head_scale`: NormFormer's c_i on head i before W_O.
    """
    d = h.shape[-1]
    dh = d // HEADS
    q_all, k_all, v_all = h @ p["q"]["weight"], source @ p["k"]["weight"], source @ p["v"]["weight"]
    heads = []
    for i in range(HEADS):
        cols = slice(i * dh, (i + 1) * dh)
        q, k, v = q_all[..., cols], k_all[..., cols], v_all[..., cols]
        if qkv_norms is not None:
            q, k, v = layer_norm(q, qkv_norms["q"]), layer_norm(k, qkv_norms["k"]), layer_norm(v, qkv_norms["v"])
        scores = jnp.einsum("btd,bsd->bts", q, k) / math.sqrt(dh)
        if causal:  # position t attends to s <= t
            t, s = scores.shape[-2:]
            scores = jnp.where(np.tril(np.ones((t, s), bool)), scores, -jnp.inf)
        w = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        w = w / jnp.sum(w, axis=-1, keepdims=True)
        head = jnp.einsum("bts,bsd->btd", w, v)
        if head_scale is not None:
            head = head * head_scale[i]
        heads.append(head)
    return jnp.concatenate(heads, axis=-1) @ p["o"]["weight"]


def ffn(p: dict, h: jax.Array, mid_norm: dict | None = None) -> jax.Array:
    """FF(h) = W2 · relu(W1 h) (no biases), optionally with NormFormer's LN on the hidden."""
    hidden = jnp.maximum(h @ p["w1"]["weight"], 0.0)
    if mid_norm is not None:
        hidden = layer_norm(hidden, mid_norm)
    return hidden @ p["w2"]["weight"]


@dataclass(frozen=True)
class Ctx:
    """What a reference layer needs to know about its stack."""

    arch: str
    stack: str  # "encoder" | "decoder"
    layers: int  # L of this stack
    enc_layers: int  # N
    dec_layers: int  # M
    memory: jax.Array | None  # encoder output, for the CA of an encdec decoder
    cfg: ModelConfig

    @property
    def causal(self) -> bool:  # decoder self-attention only
        return self.stack == "decoder"

    @property
    def kinds(self) -> tuple[str, ...]:  # SA → FF, or SA → CA → FF in an encdec decoder
        return ("attn", "cross", "mlp") if self.arch == "encdec" and self.stack == "decoder" else ("attn", "mlp")


def S(P: dict, kind: str, h: jax.Array, ctx: Ctx, **attn_extra: Any) -> jax.Array:
    """The sublayer `kind` applied to h: SA(h), CA(h, m) or FF(h)."""
    if kind == "attn":
        return attention(P["attn"], h, h, causal=ctx.causal, **attn_extra)
    if kind == "cross":
        return attention(P["cross"], h, ctx.memory, causal=False, **attn_extra)
    return ffn(P["mlp"], h)


def norm(P: dict, kind: str, slot: str) -> dict:
    return P["norms"][kind][slot]


# ---------------------------------------------------------------------------------------------
# Reference layers, one per placement: x (layer input) -> x' (layer output), docs/placements.md.
# ---------------------------------------------------------------------------------------------
def post_layer(P, x, ctx, l):
    # Post-LN: h ← LN_S(h + S(h)) for S = SA (, CA), FF.
    h = x
    for kind in ctx.kinds:
        h = layer_norm(h + S(P, kind, h, ctx), norm(P, kind, "ln"))
    return h


def pre_layer(P, x, ctx, l):
    # Pre-LN: h ← h + S(LN_S(h)); CA normalizes only its query stream.
    h = x
    for kind in ctx.kinds:
        h = h + S(P, kind, layer_norm(h, norm(P, kind, "ln")), ctx)
    return h


def b2t_layer(P, x, ctx, l):
    # B2T. Encoder: h = LN_a(x + SA(x)); x' = LN_f(x + h + FF(h)).
    # Enc–dec decoder: h1 = LN_a(x + SA(x)); h2 = LN_c(h1 + CA(h1, m)); x' = LN_f(x + h2 + FF(h2)).
    ln = lambda kind, z: layer_norm(z, norm(P, kind, "ln"))
    if "cross" not in ctx.kinds:
        h = ln("attn", x + S(P, "attn", x, ctx))
        return ln("mlp", x + h + S(P, "mlp", h, ctx))
    h1 = ln("attn", x + S(P, "attn", x, ctx))
    h2 = ln("cross", h1 + S(P, "cross", h1, ctx))
    return ln("mlp", x + h2 + S(P, "mlp", h2, ctx))


def skip_scale_layer(P, x, ctx, l):
    # xSkip+LN: y = LN(λ·x + F(x)), λ fixed.
    lam = ctx.cfg.skip_lambda
    h = x
    for kind in ctx.kinds:
        h = layer_norm(lam * h + S(P, kind, h, ctx), norm(P, kind, "ln"))
    return h


def rsln_layer(P, x, ctx, l):
    # rSkip+LN: y_1 = LN(x + F(x)); y_k = LN(x + y_{k−1}), k = 2..λ; output y_λ.
    # (The paper leaves parameter sharing open; the model documents one shared LN per sublayer.)
    h = x
    for kind in ctx.kinds:
        p = norm(P, kind, "ln")
        y = layer_norm(h + S(P, kind, h, ctx), p)
        for _ in range(2, ctx.cfg.rsln_steps + 1):
            y = layer_norm(h + y, p)
        h = y
    return h


def deepnorm_alpha(ctx: Ctx) -> float:
    """α of the DeepNorm table (docs/placements.md), computed here from the paper formulas."""
    n, m = ctx.enc_layers, ctx.dec_layers
    if ctx.arch == "encoder":
        return (2 * n) ** 0.25
    if ctx.arch == "decoder":
        return (2 * m) ** 0.25
    if ctx.stack == "encoder":
        return 0.81 * (n**4 * m) ** (1 / 16)
    return (3 * m) ** 0.25


def deepnorm_layer(P, x, ctx, l):
    # DeepNorm: h ← LN(α·h + S(h)).
    alpha = deepnorm_alpha(ctx)
    h = x
    for kind in ctx.kinds:
        h = layer_norm(alpha * h + S(P, kind, h, ctx), norm(P, kind, "ln"))
    return h


def admin_layer(P, x, ctx, l):
    # Admin: x_i = LN(ω_i ⊙ x_{i−1} + f_i(x_{i−1})), ω_i ∈ R^d.
    h = x
    for kind in ctx.kinds:
        h = layer_norm(P["extra"][kind]["omega"] * h + S(P, kind, h, ctx), norm(P, kind, "ln"))
    return h


def sandwich_layer(P, x, ctx, l):
    # Sandwich-LN, Peri-LN: h ← h + LN_out(S(LN_in(h))).
    h = x
    for kind in ctx.kinds:
        h = h + layer_norm(S(P, kind, layer_norm(h, norm(P, kind, "ln")), ctx), norm(P, kind, "ln_out"))
    return h


def mix_layer(P, x, ctx, l):
    # Mix-LN: layers l < ⌊α_m·L⌋ are Post-LN, the rest Pre-LN.
    n_post = math.floor(ctx.cfg.mix_post_fraction * ctx.layers)
    return post_layer(P, x, ctx, l) if l < n_post else pre_layer(P, x, ctx, l)


def hybrid_layer(P, x, ctx, l):
    # HybridNorm: h' = h + W_O·Attn(N_q(W_Q h), N_k(W_K h), N_v(W_V h)) (per-head norms; the
    # CA of an encdec decoder likewise, k/v from m); FFN: y = N(h'), h_next = y + FF(y).
    h = x
    for kind in ctx.kinds:
        if kind == "mlp":
            y = layer_norm(h, norm(P, "mlp", "ln"))
            h = y + S(P, "mlp", y, ctx)
        else:
            h = h + S(P, kind, h, ctx, qkv_norms=P["norms"][kind])
    return h


def normformer_layer(P, x, ctx, l):
    # NormFormer. Attention: h ← h + LN_post(HS(MHA(LN_in(h)))), HS scales head k by c_k
    # before W_O (paper form). FFN: h ← λ_res ⊙ h + W2·LN_ffn(act(W1·LN_in(h))), λ_res = 1 unless
    # --scale-resids. CA, if present, unchanged (Pre-LN).
    h = x
    for kind in ctx.kinds:
        if kind == "attn":
            z = layer_norm(h, norm(P, "attn", "ln"))
            a = attention(P["attn"], z, z, causal=ctx.causal, head_scale=P["extra"]["attn"]["head_scale"])
            h = h + layer_norm(a, norm(P, "attn", "ln_out"))
        elif kind == "cross":
            h = h + S(P, "cross", layer_norm(h, norm(P, "cross", "ln")), ctx)
        else:
            lam = P["extra"]["mlp"]["resid_scale"] if ctx.cfg.normformer_resid_scale else 1.0
            h = lam * h + ffn(P["mlp"], layer_norm(h, norm(P, "mlp", "ln")), mid_norm=norm(P, "mlp", "mid"))
    return h


def rezero_layer(P, x, ctx, l):
    # ReZero: h ← h + ρ·S(h), one ρ per layer shared by its sublayers (official code); no LN.
    rho = P["extra"]["layer"]["alpha"]
    h = x
    for kind in ctx.kinds:
        h = h + rho * S(P, kind, h, ctx)
    return h


def none_layer(P, x, ctx, l):
    # Control: h ← h + S(h), no normalization anywhere.
    h = x
    for kind in ctx.kinds:
        h = h + S(P, kind, h, ctx)
    return h


# ---------------------------------------------------------------------------------------------
# Reference stacks: embedding norm, layer loop, final norm / stack output.
# ---------------------------------------------------------------------------------------------
def _layer(params_stack: dict, l: int) -> dict:
    return jax.tree.map(lambda a: a[l], params_stack["layers"])


def single_stream(layer: Callable, *, final_norm: bool, embed_norm: bool = False) -> Callable:
    def run(params_stack: dict, e: jax.Array, ctx: Ctx) -> tuple[jax.Array, dict]:
        # Peri-LN: h_0 = LN(e); others: h_0 = e.
        h = layer_norm(e, params_stack["embed_norm"]) if embed_norm else e
        posts = []
        for l in range(ctx.layers):
            h = layer(_layer(params_stack, l), h, ctx, l)
            posts.append(h)
        # Pre-LN family: LN_final after the last layer; Post-LN family: none.
        out = layer_norm(h, params_stack["final_norm"]) if final_norm else h
        return out, {"resid_post": jnp.stack(posts)}

    return run


def residual_stack(params_stack: dict, e: jax.Array, ctx: Ctx) -> tuple[jax.Array, dict]:
    # ResiDual: a_0 = e, u_0 = s·e; every sublayer: f = S(a); u ← u + s·f; a ← LN_S(a + f);
    # stack output a_L + LN_out(u_L).
    s = ctx.cfg.residual_scale
    a, u = e, s * e
    posts, duals = [], []
    for l in range(ctx.layers):
        P = _layer(params_stack, l)
        for kind in ctx.kinds:
            f = S(P, kind, a, ctx)
            u = u + s * f
            a = layer_norm(a + f, norm(P, kind, "ln"))
        posts.append(a)
        duals.append(u)
    out = a + layer_norm(u, params_stack["final_norm"])
    return out, {"resid_post": jnp.stack(posts), "dual_resid_post": jnp.stack(duals)}


REFERENCES: dict[str, Callable] = {
    "post": single_stream(post_layer, final_norm=False),
    "pre": single_stream(pre_layer, final_norm=True),
    "b2t": single_stream(b2t_layer, final_norm=False),
    "residual": residual_stack,
    "skip_scale": single_stream(skip_scale_layer, final_norm=False),
    "rsln": single_stream(rsln_layer, final_norm=False),
    "deepnorm": single_stream(deepnorm_layer, final_norm=False),
    "admin": single_stream(admin_layer, final_norm=False),
    "sandwich": single_stream(sandwich_layer, final_norm=True),
    "peri": single_stream(sandwich_layer, final_norm=True, embed_norm=True),
    "mix": single_stream(mix_layer, final_norm=True),
    "hybrid": single_stream(hybrid_layer, final_norm=True),
    "normformer": single_stream(normformer_layer, final_norm=True),
    "rezero": single_stream(rezero_layer, final_norm=False),
    "none": single_stream(none_layer, final_norm=False),
}


def reference_model(cfg: ModelConfig, params: dict, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, dict]:
    """Logits and per-stack {"stack_out", "resid_post"[, "dual_resid_post"]} of the reference."""
    # Token embedding × sqrt(d) (fairseq; unit-variance inputs), no positions (pos="none");
    # shared by encoder and decoder.
    embed = lambda tokens: params["embed"]["table"][tokens] * math.sqrt(cfg.d_model)
    n, m = cfg.n_enc_layers, cfg.n_dec_layers
    stacks, memory, out = {}, None, None
    if cfg.arch in ("encoder", "encdec"):
        ctx = Ctx(cfg.arch, "encoder", n, n, m, None, cfg)
        out, sites = REFERENCES[cfg.placement](params["stacks"]["encoder"], embed(inputs[0]), ctx)
        stacks["encoder"] = {"stack_out": out, **sites}
        memory = out  # the encoder output (after its final norm, if any) is m for every CA
    if cfg.arch in ("decoder", "encdec"):
        ctx = Ctx(cfg.arch, "decoder", m, n, m, memory, cfg)
        out, sites = REFERENCES[cfg.placement](params["stacks"]["decoder"], embed(inputs[-1]), ctx)
        stacks["decoder"] = {"stack_out": out, **sites}
    return out @ params["head"], stacks


# ---------------------------------------------------------------------------------------------
# Model side: the model's graph with every parameter randomized, run op by op.
# ---------------------------------------------------------------------------------------------
# Every parameter leaf name the models may hold -> (center, noise std); matrices are drawn
# N(0, 1/fan_in) instead. An unknown name fails, so a new parameter kind must be added here.
_VECTOR_LEAVES = {
    "gain": (1.0, 0.3),  # norm gains γ
    "bias": (0.0, 0.3),  # norm biases β
    "omega": (1.5, 0.3),  # Admin ω
    "alpha": (0.5, 0.3),  # ReZero ρ (0 at init: would hide the whole branch)
    "head_scale": (1.0, 0.3),  # NormFormer c_k
    "resid_scale": (1.0, 0.3),  # NormFormer λ_res
    "layer_scale": (0.5, 0.3),  # LayerScale λ (test_placements_2026.py)
}


def _leaf_name(path: tuple) -> str:
    return [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]


def _randomize(abstract: nnx.State, seed: int) -> nnx.State:
    """Fresh values for every leaf (numpy's RNG: no per-shape compile of random kernels)."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    values = []
    for path, leaf in leaves:
        name = _leaf_name(path)
        noise = jnp.asarray(rng.standard_normal(leaf.shape).astype(leaf.dtype))
        if name in ("weight", "head"):  # (..., fan_in, fan_out)
            values.append(noise / math.sqrt(leaf.shape[-2]))
        elif name == "table":  # (vocab, d), × sqrt(d) in the embedding -> unit variance
            values.append(noise / math.sqrt(leaf.shape[-1]))
        elif name in _VECTOR_LEAVES:
            center, std = _VECTOR_LEAVES[name]
            values.append(center + std * noise)
        else:
            raise AssertionError(f"unknown parameter {jax.tree_util.keystr(path)}: add it to _VECTOR_LEAVES")
    return jax.tree_util.tree_unflatten(treedef, values)


def _tokens(seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (BATCH, LENGTH)), jnp.int32)


INPUTS = {"encoder": (_tokens(1),), "decoder": (_tokens(2),), "encdec": (_tokens(1), _tokens(2))}


def _assert_close(actual: jax.Array, expected: jax.Array, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != reference {expected.shape}"
    scale = float(np.sqrt(np.mean(expected**2)))
    err = float(np.max(np.abs(actual - expected)))
    assert err <= REF_TOL * max(scale, 1e-30), (
        f"{what}: max |model − reference| = {err:.3g}, rms(reference) = {scale:.3g}, "
        f"relative {err / max(scale, 1e-30):.3g} > {REF_TOL}"
    )


# ---------------------------------------------------------------------------------------------
# Tests: forward equations.
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def eager():
    """Run op by op. A jitted forward costs 1-2 s of XLA compile per placement × arch × depth (75
    programs); eagerly every case reuses the same few op shapes, ~0.05 s each. Same Python code,
    same math: the stack's scan runs as a loop over the stacked layer parameters."""
    with jax.disable_jit():
        yield


# Placements restated in their own file (their attention/FFN internals need a richer restatement).
RESTATED_ELSEWHERE = frozenset(NGPT_SUBLN_REFERENCES) - {"pre"}


def test_every_placement_has_a_reference():
    from tests.models.test_placements_2026 import REFERENCES_2026  # the 2024-26 entries, restated there

    references = {**REFERENCES, **REFERENCES_2026}
    assert set(references) | RESTATED_ELSEWHERE == set(PLACEMENTS), (
        f"placements without a reference: {sorted(set(PLACEMENTS) - set(references) - RESTATED_ELSEWHERE)}; "
        f"references without a placement: {sorted(set(references) - set(PLACEMENTS))}"
    )


@pytest.mark.parametrize(("arch", "layers"), CASES, ids=[f"{a}-L{n}" for a, n in CASES])
@pytest.mark.parametrize("placement", sorted(REFERENCES))
def test_block_matches_reference(placement: str, arch: str, layers: int, eager):
    cfg = _config(placement, arch, layers)
    assert placement in REFERENCES, f"placement {placement!r} has no reference restatement"
    # The same (graphdef, abstract state) build_model merges its initialized state into.
    graphdef, abstract = nnx.eval_shape(lambda: nnx.split(Transformer(cfg, nnx.Rngs(0))))
    state = _randomize(abstract, zlib.crc32(f"{placement}/{arch}/{layers}".encode()))
    inputs = INPUTS[arch]
    got = nnx.merge(graphdef, state).forward(*inputs)  # op by op (see `eager`)

    logits, expected = reference_model(cfg, nnx.to_pure_dict(state), inputs)
    for stack, ref in expected.items():
        sites = got.sites[stack]
        for name, value in ref.items():
            actual = sites["stack"][name] if name == "stack_out" else sites["layers"][name]
            _assert_close(actual, value, f"{placement}/{arch}/L{layers}: {stack} {name}")
    _assert_close(got.logits, logits, f"{placement}/{arch}/L{layers}: logits")


# ---------------------------------------------------------------------------------------------
# Tests: initialization constants.
# ---------------------------------------------------------------------------------------------
@functools.cache
def _init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """build_model(cfg, seed) for a non-profiled cfg, without jitting the whole init: build_model
    (models.build.init_state) draws with init_key = split(key(seed))[0] under non-partitionable
    threefry, then profiles Admin (a no-op here). Eager construction shares its compiled random
    draws across configs of equal shapes; build_model compiles one program per config. Cached:
    several tests share a model (read-only)."""
    assert not (cfg.placement == "admin" and cfg.admin_init == "profile"), "use build_model"
    init_key, _ = jax.random.split(jax.random.key(seed))
    with jax.threefry_partitionable(False):
        return Transformer(cfg, nnx.Rngs(params=init_key))


def _small(**kw: Any) -> ModelConfig:
    return ModelConfig(**{**dict(d_model=D_MODEL, heads=HEADS, d_ff=D_FF, vocab=VOCAB), **kw})


def _kinds(arch: str, stack: str) -> tuple[str, ...]:
    return ("attn", "cross", "mlp") if arch == "encdec" and stack == "decoder" else ("attn", "mlp")


DEPTHS = [(1, 1), (2, 3), (6, 6), (12, 3), (18, 18), (100, 100)]


@pytest.mark.parametrize(("n", "m"), DEPTHS)
def test_deepnorm_constants_match_paper_table(n: int, m: int):
    # DeepNorm table: (arch, stack) -> (α, β)
    table = {
        ("encoder", "encoder"): ((2 * n) ** (1 / 4), (8 * n) ** (-1 / 4)),
        ("decoder", "decoder"): ((2 * m) ** (1 / 4), (8 * m) ** (-1 / 4)),
        ("encdec", "encoder"): (0.81 * (n**4 * m) ** (1 / 16), 0.87 * (n**4 * m) ** (-1 / 16)),
        ("encdec", "decoder"): ((3 * m) ** (1 / 4), (12 * m) ** (-1 / 4)),
    }
    for (arch, stack), expected in table.items():
        got = deepnorm_constants(arch, stack, n, m)
        np.testing.assert_allclose(got, expected, rtol=1e-12, err_msg=f"{arch}/{stack} N={n} M={m}")


def _xavier_std(fan_in: int, fan_out: int) -> float:
    return math.sqrt(2.0 / (fan_in + fan_out))  # Xavier-uniform and Xavier-normal alike


# Decoder-only (8M)^-1/4 and both encdec rows (N ≠ M, cross-attention included). Encoder-only's
# (8N)^-1/4 is the decoder-only formula with N; test_deepnorm_constants_match_paper_table covers it.
DEEPNORM_INIT_CASES = [("decoder", dict(layers=3)), ("encdec", dict(enc_layers=3, dec_layers=2))]


@pytest.mark.parametrize(("arch", "depth"), DEEPNORM_INIT_CASES, ids=[a for a, _ in DEEPNORM_INIT_CASES])
def test_deepnorm_init_scales_v_o_ffn_by_beta(arch: str, depth: dict):
    # DeepNorm: Xavier with gain β for W_V, W_O (every attention) and W1, W2; gain 1 for W_Q, W_K.
    cfg = ModelConfig(arch=arch, placement="deepnorm", d_model=128, heads=4, d_ff=256, vocab=VOCAB, **depth)
    model = _init_model(cfg)
    n, m = cfg.n_enc_layers, cfg.n_dec_layers
    for name, st in model.stacks.items():
        beta = {
            ("decoder", "decoder"): (8 * m) ** -0.25,
            ("encdec", "encoder"): 0.87 * (n**4 * m) ** (-1 / 16),
            ("encdec", "decoder"): (12 * m) ** -0.25,
        }[(arch, name)]
        weights = {
            f"{kind}.{role}": (getattr(getattr(st.layers, kind), role).weight[...], role)
            for kind in _kinds(arch, name)
            if kind != "mlp"
            for role in "qkvo"
        }
        weights["mlp.w1"] = (st.layers.mlp.w1.weight[...], "w1")
        weights["mlp.w2"] = (st.layers.mlp.w2.weight[...], "w2")
        for label, (w, role) in weights.items():
            w = np.asarray(w, np.float64)  # (L, fan_in, fan_out), all layers pooled
            gain = beta if role in ("v", "o", "w1", "w2") else 1.0
            expected = gain * _xavier_std(w.shape[-2], w.shape[-1])
            tol = STD_SIGMAS * math.sqrt(1.0 / (2 * w.size))
            got = float(np.sqrt(np.mean(w**2)))  # zero-mean init: the RMS estimates the std
            assert abs(got / expected - 1) <= tol, (
                f"{arch}/{name} {label}: std {got:.5f}, expected Xavier × {gain:.4f} = {expected:.5f} "
                f"(ratio {got / expected:.4f}, tolerance ±{tol:.2%})"
            )


@pytest.mark.parametrize("n", [1, 2, 4, 6, 9, 36, 54, 100])
def test_admin_constant_omega_formula(n: int):
    # admin_torch: ω = sqrt((n+1)/ln(n+1) − 1), n = residual sublayers of the stack.
    np.testing.assert_allclose(admin_constant_omega(n), math.sqrt((n + 1) / math.log(n + 1) - 1), rtol=1e-12)


@pytest.mark.parametrize(
    ("arch", "depth"),
    [("decoder", dict(layers=3)), ("encdec", dict(enc_layers=2, dec_layers=3))],
    ids=["decoder-L3", "encdec-N2-M3"],
)
def test_admin_constant_init_uses_sublayer_count(arch: str, depth: dict):
    model = _init_model(_small(arch=arch, placement="admin", admin_init="constant", **depth))
    cfg = model.cfg
    # n = 2N (encoder), 2M (decoder-only), 3M (encdec decoder); N ≠ M tells 2N from 3M apart.
    n_sub = {"encoder": 2 * cfg.n_enc_layers, "decoder": (3 if arch == "encdec" else 2) * cfg.n_dec_layers}
    for name, st in model.stacks.items():
        n = n_sub[name]
        expected = math.sqrt((n + 1) / math.log(n + 1) - 1)
        kinds = _kinds(arch, name)
        assert set(st.layers.extra) == set(kinds)
        for kind in kinds:
            omega = np.asarray(st.layers.extra[kind]["omega"][...])
            assert omega.shape == (st.spec.layers, D_MODEL)
            np.testing.assert_allclose(omega, expected, rtol=1e-6, err_msg=f"{arch}/{name}/{kind}: n={n}")


def test_admin_profiled_omega_is_the_profiling_fixed_point():
    """ω_1 = r_0 = 1; ω_{i+1}² = ω_i²·Var(x_{i−1}) + Var(f_i(x_{i−1})) (Transformer-Clinic's running r).

    Var over all elements of the profiling batch, x_{i−1} the stream entering sublayer i and f_i its
    branch output, per stack, sublayers counted through the stack (2 per encoder layer, 3 per encdec
    decoder layer). Recomputed from a forward pass of the final model on the same batch.
    """
    seed = 3
    cfg = _small(arch="encdec", placement="admin", admin_init="profile", enc_layers=2, dec_layers=3, max_len=LENGTH)
    model = build_model(cfg, seed)
    # build_model: init_key, profile_key = split(key(seed)); batch = profile_batch(cfg, profile_key).
    _, profile_key = jax.random.split(jax.random.key(seed))
    inputs = profile_batch(cfg, profile_key)
    assert inputs[0].shape == (BATCH, LENGTH)  # the forward tests' op shapes
    with jax.disable_jit():
        sites = model.forward(*inputs).sites
    var = lambda a: float(np.var(np.asarray(a, np.float64)))
    for name, st in model.stacks.items():
        layer_sites = sites[name]["layers"]
        kinds = _kinds("encdec", name)
        # The stream entering each sublayer: the layer input, or the stream after the previous kind.
        entering = dict(zip(kinds, ("resid_pre", "resid_mid", "resid_mid_cross")))
        omegas = {k: np.asarray(st.layers.extra[k]["omega"][...]) for k in kinds}
        for k in kinds:  # one scalar per sublayer, broadcast over d
            assert np.all(omegas[k] == omegas[k][:, :1]), f"{name}/{k}: ω is not constant over features"
        order = [(l, k) for l in range(st.spec.layers) for k in kinds]
        got = [float(omegas[k][l, 0]) for l, k in order]
        expected = [1.0]
        for l, k in order[:-1]:
            x_in, f = layer_sites[entering[k]][l], layer_sites[f"{k}_out"][l]
            expected.append(math.sqrt(expected[-1] ** 2 * var(x_in) + var(f)))
        assert got[0] == 1.0, f"{name}: ω_1 = {got[0]}, expected r_0 = 1"
        np.testing.assert_allclose(got, expected, rtol=OMEGA_RTOL, err_msg=f"{name}: profiled ω {order}")
        assert got[-1] > 1.2, f"{name}: ω = {got} barely differ from Post-LN's 1; the profile did nothing"


def _weights(model: Transformer) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def _role(path: str) -> str | None:
    """'q', 'k', 'v', 'o', 'w1', 'w2' for a projection weight's path, else None."""
    keys = [k.strip("[]'") for k in path.split("][")]
    return keys[-2] if keys[-1] == "weight" else None


def _assert_rescaled(plain: dict, scaled: dict, factor: Callable[[str], float]) -> set:
    assert plain.keys() == scaled.keys()
    rescaled = set()
    for path, w in plain.items():
        f = factor(path)
        if f != 1.0:
            rescaled.add(path)
        np.testing.assert_allclose(scaled[path], f * w, rtol=GAIN_TOL, atol=GAIN_TOL * np.abs(w).max(), err_msg=path)
    return rescaled


# Unequal N, M tell the stacks apart; shared by the B2T and GPT-2 tests.
ENCDEC_DEPTH = dict(arch="encdec", enc_layers=3, dec_layers=2)


def _stack_layers(path: str) -> int:
    return ENCDEC_DEPTH["enc_layers"] if "['encoder']" in path else ENCDEC_DEPTH["dec_layers"]


def test_b2t_rescale_multiplies_every_projection_by_inverse_sqrt_layers():
    # B2T (code form): every q, k, v, out_proj, fc1, fc2 weight of the layer × L^{-1/2}, L = layers of
    # that stack (the decoder's cross-attention included); not LN, not biases, not embeddings.
    plain = _weights(_init_model(_small(placement="b2t", **ENCDEC_DEPTH)))
    scaled = _weights(_init_model(_small(placement="b2t", b2t_rescale=True, **ENCDEC_DEPTH)))
    projections = ("q", "k", "v", "o", "w1", "w2")
    factor = lambda path: _stack_layers(path) ** -0.5 if _role(path) in projections else 1.0
    rescaled = _assert_rescaled(plain, scaled, factor)
    assert {_role(p) for p in rescaled} == set(projections)
    assert any("['cross']" in p for p in rescaled)


def test_gpt2_scaled_init_scales_output_projections():
    # GPT-2: residual-output projections W_O, W2 × 1/sqrt(N_res), N_res = residual sublayers of the
    # stack (2L for encoder and decoder-only = nanoGPT's 1/sqrt(2L); 3M for the encdec decoder, whose
    # cross-attention W_O is a residual output too); everything else unchanged.
    plain = _weights(_init_model(_small(placement="b2t", **ENCDEC_DEPTH)))
    scaled = _weights(_init_model(_small(placement="b2t", gpt2_scaled_init=True, **ENCDEC_DEPTH)))
    branches = lambda path: 2 if "['encoder']" in path else 3  # the encdec decoder has cross-attention
    factor = lambda path: (branches(path) * _stack_layers(path)) ** -0.5 if _role(path) in ("o", "w2") else 1.0
    rescaled = _assert_rescaled(plain, scaled, factor)
    assert {_role(p) for p in rescaled} == {"o", "w2"}
