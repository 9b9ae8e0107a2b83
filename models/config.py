"""Model configuration: one frozen, validated dataclass for every architecture and placement.

Every default is visible here and is the harness of docs/placements.md ("The harness": Xavier-uniform
projections (gain 1), unit-variance token inputs, no biases, no dropout), so that
`ModelConfig(arch=..., placement=...)` is the model the papers analyse at initialization.

A ModelConfig holds what changes the numbers a paper would report. How they are computed (the layer
loop, recomputation, the compute dtype, how seeds run) is an execution plan's (analysis.execution).
Each name field's valid values are written once: a `Literal` type below or a registry
(`models.PLACEMENTS`, `models.NORMS`); `field_choices()` reads them for validation and the CLI.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import jax

from models.norms import NORMS
from models.placements import PLACEMENTS
from models.spec import StackSpec

Arch = Literal["encoder", "decoder", "encdec"]
Activation = Literal["relu", "gelu", "gelu_tanh", "swiglu"]
Init = Literal["xavier_uniform", "xavier_normal", "normal", "torch_default", "fairseq"]
Positions = Literal["sinusoidal", "learned", "none", "rotary"]
Dtype = Literal["float32", "bfloat16", "float64"]
AdminInit = Literal["profile", "constant"]
QKNorm = Literal["none", "l2_head", "rms_full"]

ARCHS: tuple[str, ...] = typing.get_args(Arch)
ACTIVATIONS: tuple[str, ...] = typing.get_args(Activation)
INITS: tuple[str, ...] = typing.get_args(Init)
POSITIONS: tuple[str, ...] = typing.get_args(Positions)
DTYPES: tuple[str, ...] = typing.get_args(Dtype)
ADMIN_INITS: tuple[str, ...] = typing.get_args(AdminInit)
QK_NORMS: tuple[str, ...] = typing.get_args(QKNorm)
# Name fields whose valid values are a registry's keys (the others are Literal types).
REGISTRY_FIELDS: dict[str, dict] = {"placement": PLACEMENTS, "enc_placement": PLACEMENTS, "norm": NORMS}

__all__ = ["ARCHS", "ModelConfig", "StackSpec", "field_choices", "literal_choices", "unknown_choice"]


def literal_choices(hint: object) -> tuple[str, ...] | None:
    """The values of a `Literal[...]` type (also inside `X | None`), else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if typing.get_origin(arg) is Literal:
                return typing.get_args(arg)
    return None


def unknown_choice(field: str, value: object, valid: Iterable[object]) -> str:
    """The one-line message for a value not among `valid`, with the closest valid one as a hint:
    "unknown placement 'postln'; valid choices: post, pre, ... (did you mean 'post'?)"."""
    names = [str(v) for v in valid]
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {field} {value!r}; valid choices: {', '.join(names)}{hint}"


def _choice(field: str, value: object, valid: tuple[str, ...] | list[str]) -> None:
    if value not in valid:
        raise ValueError(unknown_choice(field, value, valid))


def _positive_int(field: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field} must be an integer >= 1, got {value!r}")


def _finite(field: str, value: object, *, low: float | None = None, strict: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{field} must be {bound}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """A Transformer with one layer-normalization placement.

    Each entry's first clause (up to "; " or ". ") is its command-line help.

    Architecture:
        arch: which stacks; "encoder" bidirectional, "decoder" a causal LM, "encdec" both, the
            decoder with cross-attention.
        placement: how norms and residuals are wired in every block; a key of `models.PLACEMENTS`.
        enc_placement: another placement for an encdec's encoder (default: `placement`); the
            calibration (docs/calibration.md) used Post-LN encoders under some decoder variants.
        norm: the norm in every norm slot and the final norm; a key of `models.NORMS`.
        layers: layers of each stack.
        enc_layers: layers of the encoder stack (default: `layers`).
        dec_layers: layers of the decoder stack (default: `layers`).
        d_model: width of the residual stream; a multiple of `heads`.
        heads: attention heads; they divide `d_model`.
        d_ff: hidden width of the feed-forward sublayer.
        vocab: token vocabulary size.
        max_len: longest input sequence; the learned positions' table length.
        activation: feed-forward activation; "relu" in the papers, "gelu" the exact erf form (PyTorch's
            nn.GELU, fairseq's gelu), "gelu_tanh" its tanh approximation (GPT-2), "swiglu" the gated
            W2·(silu(W1 x) ⊙ W3 x) of LLaMA and OLMo 2 (a third d_model x d_ff matrix W3; d_ff is the
            hidden width as given, Hugging Face's intermediate_size: 8·d_model/3 matches a 4·d_model
            ungated FFN's parameters).
        dropout: rate on every sublayer output before its residual add; 0 = deterministic (fairseq).
        bias: biases in the attention and feed-forward projections; off in the harness; zero at init
            except nn.Linear's U(±1/sqrt(fan_in)) under init "torch_default" and "fairseq".

    Initialization:
        init: projection init; "xavier_uniform" (gain 1, every projection), "xavier_normal", "normal"
            (std 0.02, GPT-2), "torch_default" (PyTorch nn.Linear's U(±1/sqrt(fan_in)) everywhere:
            torchscale), or "fairseq" (fairseq 0.12: q/k/v Xavier-uniform gain 1/√2, W_O gain 1, FFN as
            torch_default); placement gains multiply each (models.layers.init_weight).
        embed_std: std of the token-embedding table (default: d_model**-0.5, fairseq).
        embed_scale: multiplier on token embeddings (default: sqrt(d_model), fairseq); the default
            token inputs have unit variance per feature.
        pos: positional encoding; "learned" ones have std `embed_std`, "sinusoidal" is fairseq's,
            "rotary" rotates q and k of every self-attention by their position (RoPE, Su et al. 2021;
            Hugging Face's rotate-half layout, as OLMo 2) and adds nothing to the embeddings.
        rope_base: the rotary frequency base θ (pos="rotary"); pair i of a head turns by
            position·θ^(-2i/d_head); 10000 in RoFormer and LLaMA, 500000 in OLMo 2.
        tie_embeddings: output head = token-embedding table transposed; else a separate head, N(0, 1/d).
        gpt2_scaled_init: GPT-2's 1/sqrt(N_res) on W_O and W2; N_res the residual sublayers of the
            stack (2L: GPT-2 / nanoGPT / Megatron), with any placement.
        dtype: dtype of the parameters and activations; "float64" needs jax's x64 mode (JAX_ENABLE_X64=1).
        norm_eps: epsilon of every norm, inside the square root.

    Placement and norm options (ignored by placements/norms that do not use them):
        b2t_rescale: B2T's L**-0.5 on every projection weight of a layer; the official code's since
            2023-05-18 (off = the paper's form).
        residual_scale: ResiDual's dual-stream scale s; `*_res_input_norm_scale`, function-preserving.
        skip_lambda: skip_scale's fixed λ in LN(λ·x + F(x)); Liu et al. 2021.
        rsln_steps: rsln's recursion order λ in {1, 2, ...}; 1 is Post-LN.
        admin_init: how Admin's ω is set; "profile": the paper's variance profiling on a random batch
            at init, "constant": admin_torch's profiling-free sqrt((n+1)/ln(n+1) - 1).
        mix_post_fraction: Mix-LN's share of Post-LN layers; the first floor(fraction * L) layers
            are Post-LN, the rest Pre-LN.
        normformer_resid_scale: NormFormer's learnable residual scale λ_res on the FFN residual.
        adanorm_scale: AdaNorm's C in C·(1 - k·y)⊙y.
        adanorm_k: AdaNorm's k in C·(1 - k·y)⊙y.
        dyt_alpha0: DyT's initial a in γ⊙tanh(a·x) + β.

    2024-26 options: attention:
        qk_norm: QK-norm on every attention, with any placement; "l2_head": per-head L2 with a
            learned (H, d_head) gain and the fixed logit scale `qk_norm_scale` (x-transformers),
            "rms_full": RMSNorm over the whole q and k projections before the head split (OLMo 2).
        qk_norm_scale: the fixed logit scale of qk_norm="l2_head" (x-transformers' default 10);
            sqrt(d_head) makes it a per-head RMSNorm with ε = 0.
        ngpt_alpha_init: nGPT's initial eigen learning rate α (both sublayers); 0.05 in the paper.
    2024-26 options (docs/placements.md, "2024-26 placements"; ignored by the others):
        completep_alpha: completep's α in h + (L/L_base)^-α·F(LN(h)); 1 = CompleteP, 0.5 = depth-µP.
        completep_base_layers: completep's L_base, the depth at which the multiplier is 1 (the
            depth the hyperparameters were tuned at); 1 gives L^-α.
        deepscalelm_beta2: deepscalelm's β² in λ·h + β·F(LN(h)), λ² = 1 - β²; default 1/n, n the
            residual sublayers of the stack (the paper's β² ∝ 1/N); 0.005 is the official code's flag.
        layerscale_init: layerscale's initial λ (every channel); default CaiT's depth rule: 0.1 up
            to 18 layers, 1e-5 up to 24, 1e-6 deeper.
        derf_alpha0: Derf's initial α in γ⊙erf(α·x + s) + β.
        derf_shift0: Derf's initial shift s in γ⊙erf(α·x + s) + β.
        dyisru_beta0: DyISRU's initial β in γ⊙sqrt(C)·x/sqrt(β + x²); default C - 1 (C the width:
            RMSNorm's value on unit-RMS inputs).
    """

    arch: Arch = "decoder"
    placement: str = "pre"
    norm: str = "layernorm"
    layers: int = 6
    enc_layers: int | None = None
    dec_layers: int | None = None
    enc_placement: str | None = None
    d_model: int = 64
    heads: int = 4
    d_ff: int = 256
    vocab: int = 128
    max_len: int = 128
    activation: Activation = "relu"
    dropout: float = 0.0
    bias: bool = False
    init: Init = "xavier_uniform"
    embed_std: float | None = None
    embed_scale: float | None = None
    pos: Positions = "sinusoidal"
    rope_base: float = 10000.0
    tie_embeddings: bool = False
    gpt2_scaled_init: bool = False
    dtype: Dtype = "float32"
    norm_eps: float = 1e-5
    b2t_rescale: bool = False
    residual_scale: float = 1.0
    skip_lambda: float = 1.0
    rsln_steps: int = 2
    admin_init: AdminInit = "profile"
    mix_post_fraction: float = 0.25
    normformer_resid_scale: bool = False
    adanorm_scale: float = 1.0
    adanorm_k: float = 0.1
    dyt_alpha0: float = 0.5
    # 2024-26 options: attention
    qk_norm: QKNorm = "none"
    qk_norm_scale: float = 10.0
    ngpt_alpha_init: float = 0.05
    # 2024-26 options
    completep_alpha: float = 1.0
    completep_base_layers: int = 1
    deepscalelm_beta2: float | None = None
    layerscale_init: float | None = None
    derf_alpha0: float = 0.5
    derf_shift0: float = 0.0
    dyisru_beta0: float | None = None

    def __post_init__(self) -> None:
        for name in ("placement", "enc_placement"):  # an alias (SkipInit) is its placement's name
            canonical = placement_aliases().get(getattr(self, name))
            if canonical is not None:
                object.__setattr__(self, name, canonical)
        for name, valid in field_choices().items():
            if name == "enc_placement" and self.enc_placement is None:
                continue
            _choice(name, getattr(self, name), valid)
        if self.enc_placement is not None and self.arch != "encdec":
            raise ValueError(f"enc_placement is only for arch='encdec', got arch={self.arch!r}")
        for name in ("layers", "d_model", "heads", "d_ff", "vocab", "max_len", "rsln_steps"):
            _positive_int(name, getattr(self, name))
        for name in ("enc_layers", "dec_layers"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.d_model % self.heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by heads={self.heads}; "
                f"valid heads for this width: {[h for h in range(1, self.d_model + 1) if self.d_model % h == 0]}"
            )
        _finite("dropout", self.dropout, low=0.0)
        if self.dropout >= 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        _finite("skip_lambda", self.skip_lambda, low=0.0)
        _finite("residual_scale", self.residual_scale, low=0.0, strict=True)
        _finite("norm_eps", self.norm_eps, low=0.0)
        _finite("rope_base", self.rope_base, low=1.0, strict=True)
        if self.pos == "rotary" and self.head_dim % 2:
            raise ValueError(
                f"pos='rotary' turns pairs of each head's dimensions, so d_model/heads must be even; got "
                f"d_model={self.d_model}, heads={self.heads} (d_head={self.head_dim})"
            )
        _finite("mix_post_fraction", self.mix_post_fraction, low=0.0)
        if self.mix_post_fraction > 1.0:
            raise ValueError(f"mix_post_fraction must be in [0, 1], got {self.mix_post_fraction!r}")
        _finite("adanorm_scale", self.adanorm_scale, low=0.0, strict=True)
        _finite("adanorm_k", self.adanorm_k, low=0.0)
        _finite("dyt_alpha0", self.dyt_alpha0)
        # 2024-26 options: attention
        _finite("qk_norm_scale", self.qk_norm_scale, low=0.0, strict=True)
        _finite("ngpt_alpha_init", self.ngpt_alpha_init)
        own_qk = [p for p in {self.placement, self.enc_placement} - {None} if PLACEMENTS[p].normalizes_qk]
        if self.qk_norm != "none" and own_qk:
            raise ValueError(
                f"placement {own_qk[0]!r} unit-normalizes q and k itself; qk_norm must be 'none' with it, "
                f"got qk_norm={self.qk_norm!r}"
            )
        for name in ("embed_std", "embed_scale"):
            if getattr(self, name) is not None:
                _finite(name, getattr(self, name), low=0.0, strict=True)
        # 2024-26 options
        _finite("completep_alpha", self.completep_alpha, low=0.0)
        _positive_int("completep_base_layers", self.completep_base_layers)
        if self.deepscalelm_beta2 is not None:
            _finite("deepscalelm_beta2", self.deepscalelm_beta2, low=0.0, strict=True)
            if self.deepscalelm_beta2 >= 1.0:
                raise ValueError(f"deepscalelm_beta2 must be in (0, 1) (λ² = 1 - β²), got {self.deepscalelm_beta2!r}")
        if self.layerscale_init is not None:
            _finite("layerscale_init", self.layerscale_init)
        _finite("derf_alpha0", self.derf_alpha0)
        _finite("derf_shift0", self.derf_shift0)
        if self.dyisru_beta0 is not None:
            _finite("dyisru_beta0", self.dyisru_beta0, low=0.0, strict=True)
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ValueError(
                "dtype='float64' needs jax's x64 mode: set the environment variable JAX_ENABLE_X64=1 "
                "(command line: JAX_ENABLE_X64=1 lnscope ...), or in Python call "
                "jax.config.update('jax_enable_x64', True) first"
            )

    # -- derived -------------------------------------------------------------------------------
    @property
    def n_enc_layers(self) -> int:
        return self.enc_layers if self.enc_layers is not None else self.layers

    @property
    def n_dec_layers(self) -> int:
        return self.dec_layers if self.dec_layers is not None else self.layers

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def replace(self, **changes: object) -> ModelConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def stacks(self) -> tuple[StackSpec, ...]:
        """The layer stacks of this architecture, bottom (input side) first."""
        specs = []
        if self.arch in ("encoder", "encdec"):
            specs.append(
                StackSpec(
                    name="encoder",
                    placement=self.enc_placement or self.placement,
                    layers=self.n_enc_layers,
                    causal=False,
                    cross=False,
                    arch=self.arch,
                    enc_layers=self.n_enc_layers,
                    dec_layers=self.n_dec_layers,
                )
            )
        if self.arch in ("decoder", "encdec"):
            specs.append(
                StackSpec(
                    name="decoder",
                    placement=self.placement,
                    layers=self.n_dec_layers,
                    causal=True,
                    cross=self.arch == "encdec",
                    arch=self.arch,
                    enc_layers=self.n_enc_layers,
                    dec_layers=self.n_dec_layers,
                )
            )
        return tuple(specs)


def placement_aliases() -> dict[str, str]:
    """{alias: placement name} of every registered placement's `aliases` (SkipInit -> rezero)."""
    return {alias: name for name, p in PLACEMENTS.items() for alias in p.aliases}


def field_choices() -> dict[str, tuple[str, ...]]:
    """Valid values of every ModelConfig name field: its Literal type's, or its registry's keys."""
    hints = typing.get_type_hints(ModelConfig)
    literal = {f.name: literal_choices(hints[f.name]) for f in dataclasses.fields(ModelConfig)}
    found = {name: values for name, values in literal.items() if values is not None}
    return {**found, **{name: tuple(registry) for name, registry in REGISTRY_FIELDS.items()}}
