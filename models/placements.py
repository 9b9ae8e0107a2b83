"""The placement registry: how norms and residual connections are wired in one block.

A placement is data. Each entry of `PLACEMENTS` holds one small wiring function per sublayer kind
(`attn`, `cross`, `mlp`) whose docstring is its equation and citation, the norm slots the block must
build, and the stack-level properties (final norm, embedding norm, a second stream, depth-dependent
constants, per-layer constants, init rescaling, per-layer parameters, layer segments, optimizer rules,
aliases). The block never branches on a
placement's name. Adding a placement = one wiring function + one `Placement` entry; every test
parametrized over `PLACEMENTS` picks it up.

A wiring function maps `(s: Sub, stream) -> stream`, where `stream` is a dict holding the residual
stream `x` (and `dual` for ResiDual), and `s` gives the sublayer's operations:
    s.branch(h)          S(h): the sublayer itself (tapped as `{kind}_out`); keywords reach inside
                         it: qk_scale, score_scale (attention), hidden_scale (FFN), used by nGPT
    s.norm(slot, z)      the norm in `slot` applied to z (its input and output are tapped)
    s.param(name)        a per-layer placement parameter (Admin's ω, ReZero's α, ...)
    s.const(name)        a static constant of the stack (DeepNorm's α, λ, ...), or this layer's entry of a
                         per-layer constant (LayerNorm Scaling's 1/sqrt(ℓ), `Placement.layer_constants`)
    s.site(name, v)      an extra named probe site (e.g. B2T's bottom-to-top path)
    s.layer_input        the stream entering the layer; s.is_last: last sublayer of the layer
Equations, references and paper-vs-code differences of every entry: docs/placements.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import jax
import jax.numpy as jnp

from models.dtypes import upcast
from models.spec import StackSpec

if TYPE_CHECKING:  # for annotations only: models.config imports this registry
    from models.config import ModelConfig

Stream = dict[str, jax.Array]
Consts = Mapping[str, Any]


class Sub(Protocol):
    kind: str
    is_last: bool
    layer_input: jax.Array

    def branch(
        self,
        h: jax.Array,
        *,
        qk_scale: jax.Array | None = None,
        score_scale: float | None = None,
        hidden_scale: jax.Array | None = None,
    ) -> jax.Array: ...
    def norm(self, slot: str, z: jax.Array, step: int = 1) -> jax.Array: ...
    def param(self, name: str) -> jax.Array: ...
    def const(self, name: str) -> Any: ...
    def site(self, name: str, value: jax.Array) -> jax.Array: ...


Wire = Callable[[Sub, Stream], Stream]
KINDS = ("attn", "cross", "mlp")


def _x(stream: Stream, x: jax.Array) -> Stream:
    return {**stream, "x": x}


# --------------------------------------------------------------------------------------------
# Wiring functions: one residual sublayer each.
# --------------------------------------------------------------------------------------------
def post_ln(s: Sub, st: Stream) -> Stream:
    """Post-LN: h ← LN(h + S(h)). Vaswani et al. 2017; fairseq `normalize_before=False`."""
    h = st["x"]
    return _x(st, s.norm("ln", h + s.branch(h)))


def pre_ln(s: Sub, st: Stream) -> Stream:
    """Pre-LN: h ← h + S(LN(h)), final LN after the stack. Xiong et al. 2020 (Table 1)."""
    h = st["x"]
    return _x(st, h + s.branch(s.norm("ln", h)))


def b2t(s: Sub, st: Stream) -> Stream:
    """B2T connection: Post-LN, and the last LN of each layer also receives the layer input x.

    Encoder: h = LN_a(x + SA(x)); x' = LN_f(x + h + FF(h)). Decoder: the CA sublayer is Post-LN and
    only the FFN's LN gets + x. Takase, Kiyono, Kobayashi, Suzuki 2022/2023, arXiv 2206.00330.
    """
    h = st["x"]
    z = h + s.branch(h)
    if s.is_last:  # the bottom-to-top term is added once per layer, before its last LN
        z = z + s.site("b2t_skip", s.layer_input)
    return _x(st, s.norm("ln", z))


def residual(s: Sub, st: Stream) -> Stream:
    """ResiDual (Pre-Post-LN): f = S(a); u ← u + s·f; a ← LN(a + f); stack out = a_L + LN_out(u_L).

    Two streams: `x` is the Post-LN stream a, `dual` the un-normalized accumulation u. Every
    sublayer reads only a. Xie et al. 2023, arXiv 2304.14802 (`ResiDualEncoderLayer.forward`).
    """
    a = st["x"]
    f = s.branch(a)
    return {**st, "x": s.norm("ln", a + f), "dual": st["dual"] + s.const("dual_scale") * f}


def skip_scale(s: Sub, st: Stream) -> Stream:
    """xSkip+LN: h ← LN(λ·h + S(h)), λ fixed (λ = 1 is Post-LN; norm='identity' gives xSkip).

    Liu, Ren, Zhang, Sun, Zou 2021, "Rethinking Skip Connection with Layer Normalization", arXiv 2105.07205.
    """
    h = st["x"]
    return _x(st, s.norm("ln", s.const("skip_lambda") * h + s.branch(h)))


def rsln(s: Sub, st: Stream) -> Stream:
    """rSkip+LN (recursive skip with LN): y₁ = LN(h + S(h)); y_k = LN(h + y_{k−1}), k = 2..λ.

    Liu, Ren et al. 2021, arXiv 2105.07205. λ = 1 is Post-LN. The paper does not say whether the λ
    applications share parameters; here one norm per sublayer is applied λ times (shared gain/bias).
    """
    h = st["x"]
    y = s.norm("ln", h + s.branch(h))
    for step in range(2, s.const("rsln_steps") + 1):
        y = s.norm("ln", h + y, step=step)
    return _x(st, y)


def deepnorm(s: Sub, st: Stream) -> Stream:
    """DeepNorm: h ← LN(α·h + S(h)); W_V, W_O, W1, W2 initialized with gain β.

    Wang, Ma, Dong, Huang, Zhang, Wei 2022, "DeepNet: Scaling Transformers to 1,000 Layers",
    arXiv 2203.00555; α, β from `deepnorm_constants`.
    """
    h = st["x"]
    return _x(st, s.norm("ln", s.const("deepnorm_alpha") * h + s.branch(h)))


def admin(s: Sub, st: Stream) -> Stream:
    """Admin: x_i = LN(ω_i ⊙ x_{i−1} + f_i(x_{i−1})), ω_i ∈ R^d set at init (profiled or constant).

    Liu, Liu, Gao, Chen, Han 2020, "Understanding the Difficulty of Training Transformers",
    arXiv 2004.08249; see `models.build.profile_admin` for the profiling.
    """
    h = st["x"]
    return _x(st, s.norm("ln", s.param("omega") * h + s.branch(h)))


def sandwich(s: Sub, st: Stream) -> Stream:
    """Sandwich-LN / Peri-LN: h ← h + LN_out(S(LN(h))), final LN after the stack.

    Ding et al. 2021 (CogView, `third_/fourth_layernorm`); Kim et al. 2025 (Peri-LN, arXiv 2502.02732).
    """
    h = st["x"]
    return _x(st, h + s.norm("ln_out", s.branch(s.norm("ln", h))))


def hybrid_attention(s: Sub, st: Stream) -> Stream:
    """HybridNorm attention: h' = h + W_O·Attn(N_q(W_Q h), N_k(W_K h), N_v(W_V h)) (per-head norms).

    Zhuo et al. 2025, "HybridNorm", arXiv 2503.04598; the q/k/v norm slots are applied inside S.
    """
    h = st["x"]
    return _x(st, h + s.branch(h))


def hybrid_ffn(s: Sub, st: Stream) -> Stream:
    """HybridNorm FFN (post-norm residual): y = N(h'); h ← y + FF(y). Zhuo et al. 2025."""
    y = s.norm("ln", st["x"])
    return _x(st, y + s.branch(y))


def normformer_attention(s: Sub, st: Stream) -> Stream:
    """NormFormer attention: h ← h + LN_out(HS(MHA(LN(h)))), HS = learnable per-head scales (before W_O).

    Shleifer, Weston, Ott 2021, arXiv 2110.09456 (paper form; fairseq scales after W_O).
    """
    h = st["x"]
    return _x(st, h + s.norm("ln_out", s.branch(s.norm("ln", h))))


def normformer_ffn(s: Sub, st: Stream) -> Stream:
    """NormFormer FFN: h ← λ_res ⊙ h + W2·LN_mid(act(W1·LN(h))), λ_res = 1 unless enabled and learned."""
    h = st["x"]
    return _x(st, s.param("resid_scale") * h + s.branch(s.norm("ln", h)))


def rezero(s: Sub, st: Stream) -> Stream:
    """ReZero: h ← h + α·S(h), α = 0 at init, one α per layer shared by its sublayers (official code).

    Bachlechner et al. 2020, "ReZero is All You Need", arXiv 2003.04887 (`RZTXEncoderLayer`).
    """
    h = st["x"]
    return _x(st, h + s.param("alpha") * s.branch(h))


def plain(s: Sub, st: Stream) -> Stream:
    """No normalization: h ← h + S(h). A control (He et al. 2016 residual)."""
    h = st["x"]
    return _x(st, h + s.branch(h))


# --------------------------------------------------------------------------------------------
# Stack-level hooks.
# --------------------------------------------------------------------------------------------
def start_single(e: jax.Array, consts: Consts) -> Stream:
    return {"x": e}


def start_dual(e: jax.Array, consts: Consts) -> Stream:
    """ResiDual: a₀ = e, u₀ = s·e (the code's fp16 down-scaling)."""
    return {"x": e, "dual": consts["dual_scale"] * e}


def finish_single(st: Stream, final_norm: Callable[[jax.Array], jax.Array] | None, consts: Consts) -> jax.Array:
    return st["x"] if final_norm is None else final_norm(st["x"])


def finish_dual(st: Stream, final_norm: Callable[[jax.Array], jax.Array] | None, consts: Consts) -> jax.Array:
    """ResiDual's stack output α·a_L + LN_out(u_L) with α = 1."""
    return st["x"] + final_norm(st["dual"])


def deepnorm_constants(arch: str, stack: str, enc_layers: int, dec_layers: int) -> tuple[float, float]:
    """DeepNorm's (α, β) for a stack (Wang et al. 2022, Table/Fig. 2; torchscale, Transformer-Clinic).

    encoder-only: ((2N)^¼, (8N)^-¼); decoder-only: ((2M)^¼, (8M)^-¼);
    encdec encoder: (0.81·(N⁴M)^1/16, 0.87·(N⁴M)^-1/16); encdec decoder: ((3M)^¼, (12M)^-¼).
    """
    n, m = enc_layers, dec_layers
    if arch == "encdec":
        if stack == "encoder":
            return 0.81 * (n**4 * m) ** (1 / 16), 0.87 * (n**4 * m) ** (-1 / 16)
        return (3 * m) ** 0.25, (12 * m) ** -0.25
    depth = n if stack == "encoder" else m
    return (2 * depth) ** 0.25, (8 * depth) ** -0.25


def residual_sublayers(spec: StackSpec) -> int:
    """n, the number of residual sublayers of a stack (2N encoder, 3M encdec decoder, 2M decoder-only)."""
    return spec.layers * len(spec.sublayers)


def admin_constant_omega(n: int) -> float:
    """admin_torch's profiling-free ω = sqrt((n+1)/ln(n+1) − 1), the O(log n) output-change choice."""
    return math.sqrt((n + 1) / math.log(n + 1) - 1)


def _no_consts(cfg: ModelConfig, spec: StackSpec) -> dict[str, Any]:
    return {}


def _no_gains(cfg: ModelConfig, spec: StackSpec) -> dict[str, float]:
    return {}


def _no_params(cfg: ModelConfig, spec: StackSpec) -> dict[str, dict[str, jax.Array]]:
    return {}


def _no_layer_consts(cfg: ModelConfig, spec: StackSpec) -> dict[str, tuple[float, ...]]:
    return {}


def _no_optimizer_rules(cfg: ModelConfig, spec: StackSpec) -> dict[str, float]:
    return {}


def _all(fn: Wire) -> dict[str, Wire]:
    return {kind: fn for kind in KINDS}


def _slots(*slots: str) -> dict[str, tuple[str, ...]]:
    return {kind: slots for kind in KINDS}


@dataclass(frozen=True)
class Placement:
    """A registry entry: the wiring of one placement and the stack-level properties it needs."""

    name: str
    wiring: Mapping[str, Wire]
    norm_slots: Mapping[str, tuple[str, ...]]
    reference: str
    final_norm: bool = False
    embed_norm: bool = False
    start: Callable[[jax.Array, Consts], Stream] = start_single
    finish: Callable[..., jax.Array] = finish_single
    constants: Callable[[ModelConfig, StackSpec], dict[str, Any]] = _no_consts
    init_gains: Callable[[ModelConfig, StackSpec], dict[str, float]] = _no_gains
    # {"attn" | "cross" | "mlp" | "layer": {name: initial value (per layer)}}; "layer" = shared
    layer_params: Callable[[ModelConfig, StackSpec], dict[str, dict[str, jax.Array]]] = _no_params
    # Layers in consecutive segments of different wiring (Mix-LN); None = one segment of `wiring`.
    segments: Callable[[ModelConfig, StackSpec], tuple[tuple[Mapping[str, Wire], int], ...]] | None = None
    # "post" (norm after the residual add), "pre" (residual stream left un-normalized), "none" (no norm)
    family: str = "post"
    # Whether ModelConfig.admin_init="profile" applies (ω set from activation variances at init).
    profiled: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    # -- 2024-26 hooks (QK-norm, Sub-LN, nGPT) --
    # The placement unit-normalizes q and k itself (nGPT): ModelConfig.qk_norm must stay "none".
    normalizes_qk: bool = False
    # A learned per-token logit scale s_z (nGPT): cfg -> (stored initial value, multiplier); the
    # logits are multiplied by stored·multiplier. Read from the stack that feeds the output head.
    logit_scale: Callable[[ModelConfig], tuple[float, float]] | None = None
    # A step after every optimizer update (and once at init): (cfg, params) -> params, where params
    # is the model's nnx.State (nGPT: every weight vector back to unit norm). Applied by
    # analysis.train.step inside the compiled step; models.transformer.after_update composes them.
    after_update: Callable[[ModelConfig, Any], Any] | None = None
    # {name: one value per layer, bottom first}: constants that differ between layers but are not
    # learned (LayerNorm Scaling's 1/sqrt(ℓ)); the layer loop hands layer ℓ its entry as s.const(name).
    layer_constants: Callable[[ModelConfig, StackSpec], dict[str, tuple[float, ...]]] = _no_layer_consts
    # Other names the same rule is published under (SkipInit for ReZero): listed, never a second entry.
    aliases: tuple[str, ...] = ()
    # AdamW rules for every parameter of the stack's layers (weights, biases, norms, per-layer
    # parameters), read by analysis.train.optim: {"lr": learning-rate multiplier, "eps": ε multiplier};
    # empty = the optimizer as configured. Embeddings, head and stack-level norms keep the base rules.
    optimizer_rules: Callable[[ModelConfig, StackSpec], dict[str, float]] = _no_optimizer_rules
    # A multiplier on the token-embedding table at init (T-Fixup's (9N)^(-1/4)); None = the harness's
    # draw. The table is shared by an encdec's stacks: `embedding_init_gain` picks the stack.
    embed_init_gain: Callable[[ModelConfig, StackSpec], float] | None = None

    def layer_segments(self, cfg: ModelConfig, spec: StackSpec) -> tuple[tuple[Mapping[str, Wire], int], ...]:
        if self.segments is None:
            return ((self.wiring, spec.layers),)
        return tuple((w, n) for w, n in self.segments(cfg, spec) if n > 0)


def _residual_consts(cfg: ModelConfig, spec: StackSpec) -> dict[str, Any]:
    return {"dual_scale": cfg.residual_scale}


def _b2t_gains(cfg: ModelConfig, spec: StackSpec) -> dict[str, float]:
    # Official code (`rescaling_init`, commit 4d80167): every projection weight × L^-1/2, not LN, not biases.
    if not cfg.b2t_rescale:
        return {}
    return {role: spec.layers**-0.5 for role in ("q", "k", "v", "o", "w1", "w2")}


def _deepnorm_consts(cfg: ModelConfig, spec: StackSpec) -> dict[str, Any]:
    alpha, _ = deepnorm_constants(spec.arch, spec.name, spec.enc_layers, spec.dec_layers)
    return {"deepnorm_alpha": alpha}


def _deepnorm_gains(cfg: ModelConfig, spec: StackSpec) -> dict[str, float]:
    _, beta = deepnorm_constants(spec.arch, spec.name, spec.enc_layers, spec.dec_layers)
    return {"v": beta, "o": beta, "w1": beta, "w2": beta}


def _admin_params(cfg: ModelConfig, spec: StackSpec) -> dict[str, dict[str, jax.Array]]:
    # "profile" starts from ω = 1 (Post-LN) and is overwritten by models.build.profile_admin.
    omega = 1.0 if cfg.admin_init == "profile" else admin_constant_omega(residual_sublayers(spec))
    value = jnp.full((cfg.d_model,), omega, jnp.dtype(cfg.dtype))
    return {kind: {"omega": value} for kind in spec.sublayers}


def _rezero_params(cfg: ModelConfig, spec: StackSpec) -> dict[str, dict[str, jax.Array]]:
    return {"layer": {"alpha": jnp.zeros((), jnp.dtype(cfg.dtype))}}


def _normformer_params(cfg: ModelConfig, spec: StackSpec) -> dict[str, dict[str, jax.Array]]:
    dtype = jnp.dtype(cfg.dtype)
    params = {"attn": {"head_scale": jnp.ones((cfg.heads,), dtype)}}
    # λ_res is a parameter only when enabled (fairseq --scale-resids); otherwise the constant 1.
    params["mlp"] = {"resid_scale": jnp.ones((cfg.d_model,), dtype)} if cfg.normformer_resid_scale else {}
    return params


def _normformer_consts(cfg: ModelConfig, spec: StackSpec) -> dict[str, Any]:
    return {"resid_scale": 1.0}


def _mix_segments(cfg: ModelConfig, spec: StackSpec) -> tuple[tuple[Mapping[str, Wire], int], ...]:
    n_post = math.floor(cfg.mix_post_fraction * spec.layers)
    return ((_all(post_ln), n_post), (_all(pre_ln), spec.layers - n_post))


PLACEMENTS: dict[str, Placement] = {
    p.name: p
    for p in (
        Placement("post", _all(post_ln), _slots("ln"), "Vaswani et al. 2017"),
        Placement("pre", _all(pre_ln), _slots("ln"), "Xiong et al. 2020", final_norm=True, family="pre"),
        Placement("b2t", _all(b2t), _slots("ln"), "Takase et al. 2022", init_gains=_b2t_gains),
        Placement(
            "residual",
            _all(residual),
            _slots("ln"),
            "Xie et al. 2023 (ResiDual)",
            final_norm=True,
            start=start_dual,
            finish=finish_dual,
            constants=_residual_consts,
        ),
        Placement(
            "skip_scale",
            _all(skip_scale),
            _slots("ln"),
            "Liu, Ren et al. 2021 (xSkip+LN)",
            constants=lambda cfg, spec: {"skip_lambda": cfg.skip_lambda},
        ),
        Placement(
            "rsln",
            _all(rsln),
            _slots("ln"),
            "Liu, Ren et al. 2021 (rSkip+LN)",
            constants=lambda cfg, spec: {"rsln_steps": cfg.rsln_steps},
        ),
        Placement(
            "deepnorm",
            _all(deepnorm),
            _slots("ln"),
            "Wang et al. 2022 (DeepNet)",
            constants=_deepnorm_consts,
            init_gains=_deepnorm_gains,
        ),
        Placement(
            "admin", _all(admin), _slots("ln"), "Liu et al. 2020 (Admin)", layer_params=_admin_params, profiled=True
        ),
        Placement(
            "sandwich",
            _all(sandwich),
            _slots("ln", "ln_out"),
            "Ding et al. 2021 (CogView)",
            final_norm=True,
            family="pre",
        ),
        Placement(
            "peri",
            _all(sandwich),
            _slots("ln", "ln_out"),
            "Kim et al. 2025 (Peri-LN)",
            final_norm=True,
            embed_norm=True,
            family="pre",
        ),
        Placement(
            "mix",
            _all(pre_ln),
            _slots("ln"),
            "Li, Yin, Liu 2024 (Mix-LN)",
            final_norm=True,
            segments=_mix_segments,
            family="pre",
        ),
        Placement(
            "hybrid",
            {"attn": hybrid_attention, "cross": hybrid_attention, "mlp": hybrid_ffn},
            {"attn": ("q", "k", "v"), "cross": ("q", "k", "v"), "mlp": ("ln",)},
            "Zhuo et al. 2025 (HybridNorm)",
            final_norm=True,
            family="post",  # the FFN re-normalizes the stream every layer
        ),
        Placement(
            "normformer",
            {"attn": normformer_attention, "cross": pre_ln, "mlp": normformer_ffn},
            {"attn": ("ln", "ln_out"), "cross": ("ln",), "mlp": ("ln", "mid")},
            "Shleifer et al. 2021 (NormFormer)",
            final_norm=True,
            family="pre",
            layer_params=_normformer_params,
            constants=_normformer_consts,
        ),
        Placement(
            "rezero",
            _all(rezero),
            _slots(),
            "Bachlechner et al. 2020",
            layer_params=_rezero_params,
            family="none",
            aliases=("skipinit",),
        ),
        Placement("none", _all(plain), _slots(), "plain residual (control)", family="none"),
    )
}


# --------------------------------------------------------------------------------------------
# The 2024-26 placements (docs/placements.md, "2024-26 placements"): wiring, constants, entries.
# --------------------------------------------------------------------------------------------
def lns(s: Sub, st: Stream) -> Stream:
    """LayerNorm Scaling: h ← h + S(LN(h)/sqrt(ℓ)), ℓ the 1-based layer index; final LN after the stack.

    Sun et al. 2025, "The Curse of Depth in Large Language Models", arXiv 2502.05795
    (lmsdss/LayerNorm-Scaling `modeling_llama.py`, both sublayers of a layer scaled alike).
    """
    h = st["x"]
    z = s.norm("ln", h)
    return _x(st, h + s.branch(z * s.const("lns_scale").astype(z.dtype)))


def completep(s: Sub, st: Stream) -> Stream:
    """CompleteP / depth-µP: h ← h + m^(−α)·S(LN(h)), m = L/L_base; α = 1 CompleteP, α = ½ depth-µP.

    Dey et al. 2025, "Don't be lazy: CompleteP enables compute-efficient deep transformers", arXiv
    2505.01618 (EleutherAI/nanoGPT-mup, branch `completep`, `Block`); final LN after the stack.
    """
    h = st["x"]
    return _x(st, h + s.const("completep_scale") * s.branch(s.norm("ln", h)))


def deepscalelm(s: Sub, st: Stream) -> Stream:
    """DeepScaleLM: h ← λ·h + β·S(LN(h)), λ² + β² = 1 (`deepscalelm_constants`); final LN.

    Kedia et al. 2024, "Transformers Get Stable: An End-to-End Signal Propagation Theory for
    Language Models", arXiv 2403.09635 (akhilkedia/TranformersGetStable, Megatron `transformer.py`).
    """
    h = st["x"]
    return _x(st, s.const("dslm_lambda") * h + s.const("dslm_beta") * s.branch(s.norm("ln", h)))


def olmo2(s: Sub, st: Stream) -> Stream:
    """OLMo-2: h ← h + N_out(S(h)), a norm on the sublayer output only; final norm after the stack.

    OLMo et al. 2025, "2 OLMo 2 Furious", arXiv 2501.00656 (Hugging Face transformers
    `Olmo2DecoderLayer`: RMSNorm after attention and after the MLP, none on their inputs).
    """
    h = st["x"]
    return _x(st, h + s.norm("ln_out", s.branch(h)))


def layerscale(s: Sub, st: Stream) -> Stream:
    """LayerScale: h ← h + diag(λ)·S(LN(h)), λ ∈ R^d learnable per sublayer, small at init; final LN.

    Touvron et al. 2021, "Going deeper with Image Transformers" (CaiT), arXiv 2103.17239
    (facebookresearch/deit `cait_models.py`, `gamma_1`, `gamma_2`).
    """
    h = st["x"]
    return _x(st, h + s.param("layer_scale") * s.branch(s.norm("ln", h)))


def lns_scales(layers: int) -> tuple[float, ...]:
    """LayerNorm Scaling's 1/sqrt(ℓ) for ℓ = 1..layers (bottom layer first)."""
    return tuple(1.0 / math.sqrt(layer) for layer in range(1, layers + 1))


def completep_multiplier(layers: int, alpha: float, base_layers: int) -> float:
    """m^(−α) with m = layers/base_layers: the residual-branch multiplier of CompleteP (α = 1) or
    depth-µP (α = ½). base_layers = L_base, the depth whose tuned hyperparameters are transferred."""
    return (layers / base_layers) ** -alpha


def deepscalelm_constants(n_sublayers: int, beta2: float | None = None) -> tuple[float, float]:
    """DeepScaleLM's (λ, β) with λ² + β² = 1: β² = beta2 if given (the code's flag default is 0.005),
    else β² = 1/n, n = residual sublayers of the stack (the paper's β² ∝ 1/N; see docs/placements.md)."""
    b2 = 1.0 / n_sublayers if beta2 is None else beta2
    return math.sqrt(1.0 - b2), math.sqrt(b2)


def cait_layerscale_init(layers: int) -> float:
    """CaiT's LayerScale init ε by depth: 0.1 up to 18 layers, 1e-5 up to 24, 1e-6 deeper (Touvron et al. 2021)."""
    return 0.1 if layers <= 18 else 1e-5 if layers <= 24 else 1e-6


def tfixup_gain(stack: str, enc_layers: int, dec_layers: int) -> float:
    """T-Fixup's init scale of W_V, W_O and the FFN weights: encoder 0.67·N^(−1/4), decoder (9M)^(−1/4).

    Huang, Perez, Ba, Volkovs 2020, "Improving Transformer Optimization Through Better
    Initialization" (ICML 2020), Algorithm 1; layer6ai-labs/T-Fixup. N, M: encoder, decoder layers.
    """
    return 0.67 * enc_layers**-0.25 if stack == "encoder" else (9 * dec_layers) ** -0.25


def tfixup_embedding_gain(stack: str, enc_layers: int, dec_layers: int) -> float:
    """T-Fixup's scale of a stack's input embeddings: (9N)^(−1/4) for the encoder's, (9M)^(−1/4) for
    the decoder's (Algorithm 1 step 2; layer6ai-labs/T-Fixup `TransformerEncoder/Decoder.__init__`,
    on the N(0, d^(−1/2)) table, before fairseq's sqrt(d) scale). The encoder's is not 0.67·N^(−1/4)."""
    return (9 * (enc_layers if stack == "encoder" else dec_layers)) ** -0.25


def embedding_init_gain(cfg: ModelConfig) -> float:
    """The multiplier on the (shared) token-embedding table at init: the bottom stack's placement's
    `embed_init_gain`, else the next stack's, else 1. For an encdec that is the encoder's, as fairseq's
    `--share-all-embeddings` (one table for both stacks) scales it once, by the encoder's factor."""
    for spec in cfg.stacks():
        rule = PLACEMENTS[spec.placement].embed_init_gain
        if rule is not None:
            return rule(cfg, spec)
    return 1.0


def _lns_layer_consts(cfg: ModelConfig, spec: StackSpec) -> dict[str, tuple[float, ...]]:
    return {"lns_scale": lns_scales(spec.layers)}


def _completep_consts(cfg: ModelConfig, spec: StackSpec) -> dict[str, Any]:
    return {"completep_scale": completep_multiplier(spec.layers, cfg.completep_alpha, cfg.completep_base_layers)}


def completep_optimizer_rules(layers: int, alpha: float, base_layers: int) -> dict[str, float]:
    """CompleteP's depth rules for AdamW on the hidden (per-layer) parameters, m = layers/base_layers:
    learning rate × m^(α−1), ε × m^(−α) (Dey et al. 2025; width multiplier 1). α = 1 keeps the learning
    rate; α = ½ (depth-µP) lowers it as m^(−½)."""
    m = layers / base_layers
    return {"lr": m ** (alpha - 1.0), "eps": m**-alpha}


def _completep_optimizer_rules(cfg: ModelConfig, spec: StackSpec) -> dict[str, float]:
    return completep_optimizer_rules(spec.layers, cfg.completep_alpha, cfg.completep_base_layers)


def _deepscalelm_consts(cfg: ModelConfig, spec: StackSpec) -> dict[str, Any]:
    lam, beta = deepscalelm_constants(residual_sublayers(spec), cfg.deepscalelm_beta2)
    return {"dslm_lambda": lam, "dslm_beta": beta}


def _layerscale_params(cfg: ModelConfig, spec: StackSpec) -> dict[str, dict[str, jax.Array]]:
    init = cfg.layerscale_init if cfg.layerscale_init is not None else cait_layerscale_init(spec.layers)
    value = jnp.full((cfg.d_model,), init, jnp.dtype(cfg.dtype))
    return {kind: {"layer_scale": value} for kind in spec.sublayers}


def _tfixup_gains(cfg: ModelConfig, spec: StackSpec) -> dict[str, float]:
    gain = tfixup_gain(spec.name, spec.enc_layers, spec.dec_layers)
    # The code multiplies v_proj by a further √2, undoing fairseq's Xavier gain 1/√2 on it (the
    # paper's "Xavier initialization for all parameters"); only init="fairseq" draws that 1/√2.
    v_gain = gain * math.sqrt(2.0) if cfg.init == "fairseq" else gain
    return {"v": v_gain, "o": gain, "w1": gain, "w2": gain}


def _tfixup_embedding_gain(cfg: ModelConfig, spec: StackSpec) -> float:
    return tfixup_embedding_gain(spec.name, spec.enc_layers, spec.dec_layers)


PLACEMENTS.update(
    {
        p.name: p
        for p in (
            Placement(
                "lns",
                _all(lns),
                _slots("ln"),
                "Sun et al. 2025 (LayerNorm Scaling)",
                final_norm=True,
                family="pre",
                layer_constants=_lns_layer_consts,
            ),
            Placement(
                "completep",
                _all(completep),
                _slots("ln"),
                "Dey et al. 2025 (CompleteP / depth-µP)",
                final_norm=True,
                family="pre",
                constants=_completep_consts,
                optimizer_rules=_completep_optimizer_rules,
            ),
            Placement(
                "deepscalelm",
                _all(deepscalelm),
                _slots("ln"),
                "Kedia et al. 2024 (DeepScaleLM)",
                final_norm=True,
                family="pre",
                constants=_deepscalelm_consts,
            ),
            Placement(
                "olmo2", _all(olmo2), _slots("ln_out"), "OLMo et al. 2025 (OLMo 2)", final_norm=True, family="pre"
            ),
            Placement(
                "layerscale",
                _all(layerscale),
                _slots("ln"),
                "Touvron et al. 2021 (CaiT LayerScale)",
                final_norm=True,
                family="pre",
                layer_params=_layerscale_params,
            ),
            Placement(
                "tfixup",
                _all(plain),
                _slots(),
                "Huang et al. 2020 (T-Fixup)",
                family="none",
                init_gains=_tfixup_gains,
                embed_init_gain=_tfixup_embedding_gain,
            ),
        )
    }
)


def register_placement(placement: Placement) -> Placement:
    """Add `placement` to `PLACEMENTS` (ModelConfig, the block and the CLI read it there). A name
    already registered is an error: replacing a placement would silently change every model of it."""
    if not isinstance(placement, Placement):
        raise TypeError(f"register_placement takes a Placement, got {type(placement).__name__}")
    if placement.name in PLACEMENTS:
        raise ValueError(f"placement {placement.name!r} is already registered; registered: {', '.join(PLACEMENTS)}")
    PLACEMENTS[placement.name] = placement
    return placement


# --------------------------------------------------------------------------------------------
# 2024-26 placements: Sub-LN (Magneto) and nGPT. Their attention/FFN internals (Sub-LN's norm
# before W_O, nGPT's unit-norm q/k and s_u) are slots and `Sub.branch` keywords, not name branches.
# --------------------------------------------------------------------------------------------
NGPT = "ngpt"
# nGPT weights unit-norm along the embedding axis: the fan-in axis (-2) of q, k, v, W1 ((d, ·)
# matrices read the stream; W3 of a gated FFN too) and the fan-out axis (-1) of W_O, W2 (they write
# it); x @ W layout.
NGPT_EMBEDDING_AXIS = {"q": -2, "k": -2, "v": -2, "w1": -2, "w3": -2, "o": -1, "w2": -1}


def unit_norm(z: jax.Array) -> jax.Array:
    """Norm(z) = z / ‖z‖₂ over the last axis (nGPT's `justnorm`: no ε), in at least float32."""
    z32 = upcast(z)
    return (z32 / jnp.sqrt(jnp.sum(jnp.square(z32), axis=-1, keepdims=True))).astype(z.dtype)


def _ngpt_step(s: Sub, st: Stream, out: jax.Array) -> Stream:
    h = st["x"]
    alpha = jnp.abs(s.param("alpha") * (s.const("ngpt_alpha_init") * s.const("ngpt_scale")))
    a = unit_norm(h)  # the official code normalizes h again ("normally not needed"): layer 1's input
    return _x(st, unit_norm(a + alpha * (unit_norm(out) - a)))


def ngpt_attention(s: Sub, st: Stream) -> Stream:
    """nGPT attention: h ← Norm(h + |α_A| ⊙ (Norm(SA(h)) − h)), Norm(z) = z/‖z‖₂; no LN.

    Inside SA: q_h ← s_qk,h ⊙ Norm(q_h), k_h ← s_qk,h ⊙ Norm(k_h) (both scaled, per head and
    dimension), logits × sqrt(d_h) instead of 1/sqrt(d_h). Effective α_A = α·(α_init·√d), s_qk =
    stored·√d (stored at 1/√d: the paper's "init scaling" reparametrization). Loshchilov, Hsieh, Sun,
    Ginsburg 2024, "nGPT", arXiv 2410.01131; NVIDIA/ngpt `model.py` (`Block.forward`).
    """
    h = st["x"]
    out = s.branch(h, qk_scale=s.param("s_qk") * s.const("ngpt_scale"), score_scale=s.const("ngpt_score_scale"))
    return _ngpt_step(s, st, out)


def ngpt_ffn(s: Sub, st: Stream) -> Stream:
    """nGPT FFN: h ← Norm(h + |α_M| ⊙ (Norm(W2·act(s_u·√d ⊙ W1 h)) − h)) (lnscope's FFN, see docs).

    NVIDIA/ngpt gates: u ⊙ silu(v) with (s_u, s_v)·√d on both halves; lnscope keeps its one-matrix
    FFN (cfg.activation, cfg.d_ff) so placements share sublayers, and scales its pre-activation.
    """
    h = st["x"]
    return _ngpt_step(s, st, s.branch(h, hidden_scale=s.param("s_u") * s.const("ngpt_scale")))


def subln(s: Sub, st: Stream) -> Stream:
    """Sub-LN (Magneto): h ← h + S(LN(h)) with a second LN inside S, final LN after the stack.

    SA(z) = W_O·LN_inner(concat_h head_h(z)) (self-attention only; cross-attention is plain Pre-LN);
    FF(z) = W2·LN_mid(act(W1 z)). v_proj, out_proj, fc1, fc2 × `subln_gain` at init. Wang, Ma, Huang
    et al. 2022, "Foundation Transformers", arXiv 2210.06423; microsoft/torchscale `subln=True`.
    """
    h = st["x"]
    return _x(st, h + s.branch(s.norm("ln", h)))


def subln_gain(arch: str, stack: str, enc_layers: int, dec_layers: int) -> float:
    """Sub-LN's init multiplier γ of v_proj, out_proj, fc1, fc2 (torchscale `subln=True`).

    encoder-only: sqrt(log 2N); decoder-only: sqrt(log 2M); encdec decoder: sqrt(log 3M) (its
    cross-attention untouched); encdec encoder: sqrt(log(3M)·log(2N)/3).
    """
    n, m = enc_layers, dec_layers
    if arch == "encdec":
        if stack == "encoder":
            return math.sqrt(math.log(3 * m) * math.log(2 * n) / 3)
        return math.sqrt(math.log(3 * m))
    return math.sqrt(math.log(2 * (n if stack == "encoder" else m)))


def _subln_gains(cfg: ModelConfig, spec: StackSpec) -> dict[str, float]:
    gain = subln_gain(spec.arch, spec.name, spec.enc_layers, spec.dec_layers)
    gains = {"v": gain, "o": gain, "w1": gain, "w2": gain}
    # torchscale's Decoder skips "encoder_attn" parameters: the cross-attention keeps gain 1.
    return {**gains, "cross.v": 1.0, "cross.o": 1.0} if spec.cross else gains


def _ngpt_consts(cfg: ModelConfig, spec: StackSpec) -> dict[str, Any]:
    return {
        "ngpt_scale": math.sqrt(cfg.d_model),  # init_value / init_scaling with init_scaling = 1/√d
        "ngpt_alpha_init": cfg.ngpt_alpha_init,
        "ngpt_score_scale": math.sqrt(cfg.head_dim),
    }


def _ngpt_params(cfg: ModelConfig, spec: StackSpec) -> dict[str, dict[str, jax.Array]]:
    # Stored values of the official code: α and s_qk at their init scaling 1/√d (effective α_init
    # and 1 after × α_init·√d and × √d), s_u at 1 (effective √d after × √d).
    dtype, base = jnp.dtype(cfg.dtype), cfg.d_model**-0.5
    attention = lambda: {
        "alpha": jnp.full((cfg.d_model,), base, dtype),
        "s_qk": jnp.full((cfg.heads, cfg.head_dim), base, dtype),
    }
    params = {kind: attention() for kind in spec.sublayers if kind != "mlp"}
    params["mlp"] = {"alpha": jnp.full((cfg.d_model,), base, dtype), "s_u": jnp.ones((cfg.d_ff,), dtype)}
    return params


def _ngpt_logit_scale(cfg: ModelConfig) -> tuple[float, float]:
    return cfg.d_model**-0.5, math.sqrt(cfg.d_model)  # s_z stored at 1/√d, effective 1


def ngpt_renormalize(cfg: ModelConfig, params: Any) -> Any:
    """nGPT's `normalize_matrices`: every weight vector back to unit norm along the embedding axis.

    The token table (rows), the output head (columns; the table itself when tied) whenever a stack is
    nGPT, and q, k, v, W_O, W1, W2 of every nGPT stack (`NGPT_EMBEDDING_AXIS`). `params` is the
    model's nnx.State (or its pure dict); other leaves pass through unchanged.
    """
    stacks = {spec.name for spec in cfg.stacks() if spec.placement == NGPT}
    output_is_ngpt = cfg.stacks()[-1].placement == NGPT

    def axis_of(keys: list[str]) -> int | None:
        if keys[:2] == ["embed", "table"]:
            return -1
        if keys[:1] == ["head"]:
            return -2 if output_is_ngpt else None
        if len(keys) >= 4 and keys[0] == "stacks" and keys[1] in stacks and keys[-1] == "weight":
            return NGPT_EMBEDDING_AXIS.get(keys[-2])
        return None

    def fix(path: tuple, leaf: jax.Array) -> jax.Array:
        axis = axis_of([k.key for k in path if isinstance(k, jax.tree_util.DictKey)]) if stacks else None
        return leaf if axis is None else jnp.moveaxis(unit_norm(jnp.moveaxis(leaf, axis, -1)), -1, axis)

    return jax.tree_util.tree_map_with_path(fix, params)


for _placement in (
    Placement(
        "subln",
        _all(subln),
        {"attn": ("ln", "inner"), "cross": ("ln",), "mlp": ("ln", "mid")},
        "Wang et al. 2022 (Sub-LN, Magneto)",
        final_norm=True,
        family="pre",
        init_gains=_subln_gains,
    ),
    Placement(
        NGPT,
        {"attn": ngpt_attention, "cross": ngpt_attention, "mlp": ngpt_ffn},
        _slots(),
        "Loshchilov et al. 2024 (nGPT)",
        family="post",  # the stream is re-normalized after every sublayer
        constants=_ngpt_consts,
        layer_params=_ngpt_params,
        normalizes_qk=True,
        logit_scale=_ngpt_logit_scale,
        after_update=ngpt_renormalize,
    ),
):
    register_placement(_placement)
