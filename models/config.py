"""Model configuration: one frozen, validated dataclass for every architecture and placement.

Every default is visible here and is the harness of docs/placements.md ("The harness": fairseq-style
Xavier-uniform projections, unit-variance token inputs, no biases, no dropout), so that
`ModelConfig(arch=..., placement=...)` is the model the papers analyse at initialization.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

ARCHS: tuple[str, ...] = ("encoder", "decoder", "encdec")
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu")
INITS: tuple[str, ...] = ("xavier_uniform", "xavier_normal", "normal")
POSITIONS: tuple[str, ...] = ("sinusoidal", "learned", "none")
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float64")
COMPUTE_DTYPES: tuple[str, ...] = ("bfloat16",)  # ModelConfig.compute_dtype: None or one of these
ADMIN_INITS: tuple[str, ...] = ("profile", "constant")


def _choice(field: str, value: object, valid: tuple[str, ...] | list[str]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {field} {value!r}; valid choices: {', '.join(map(str, valid))}")


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

    Architecture:
        arch: "encoder" (bidirectional), "decoder" (causal LM) or "encdec" (encoder + causal decoder
            with cross-attention).
        placement: key of `models.PLACEMENTS` (how norms and residuals are wired in every block).
        enc_placement: encdec only; a different placement for the encoder stack (default: `placement`).
            The calibration (docs/calibration.md) used Post-LN encoders under some decoder variants.
        norm: key of `models.NORMS`, used in every norm slot of the placement (and the final norm).
        layers: layers of each stack; `enc_layers` / `dec_layers` override it per stack.
        d_model, heads, d_ff, vocab, max_len: widths and sizes; `d_model % heads == 0`.
        activation: FFN activation, "relu" (the papers) or "gelu".
        dropout: rate on every sublayer output before its residual add (fairseq); 0 = deterministic.
        bias: biases in the attention and FFN projections (zero at init; off in the harness).

    Initialization:
        init: "xavier_uniform" (fairseq, gain 1), "xavier_normal", or "normal" (std 0.02, GPT-2).
        embed_std: std of the token-embedding table; None -> d_model**-0.5 (fairseq).
        embed_scale: multiplier on token embeddings; None -> sqrt(d_model) (fairseq), so the default
            token inputs have unit variance per feature.
        pos: positional encoding, "sinusoidal" (fairseq), "learned" (std `embed_std`), or "none".
        tie_embeddings: output head = token-embedding table transposed; else a separate head, N(0, 1/d).
        gpt2_scaled_init: multiply the residual-output projections (W_O, W2) by 1/sqrt(N_res), N_res
            the residual sublayers of the stack (2L: GPT-2 / nanoGPT / Megatron), with any placement.
        dtype: parameters and compute; "float64" needs `jax.config.update("jax_enable_x64", True)`.
        norm_eps: epsilon of every norm (inside the square root).

    Execution (how the numbers are computed, not which function):
        compute_dtype: None (matmuls in `dtype`) or "bfloat16": mixed precision, with float32
            parameters, norms, softmax, residual stream and probes, and the projections and output
            head (forward and backward) taking bfloat16 inputs and accumulating in float32; the two
            attention einsums (scores, mixing) stay float32. Needs dtype="float32". Numbers differ
            from float32 by bfloat16 input rounding (tolerances in tests/models/test_mixed_precision.py).
            Faster only on CPUs that multiply bfloat16 in hardware (AMX, AVX512-BF16); slower on
            AVX2-only CPUs (benchmarks/README.md).
        unroll_layers: stacks of at most this many layers run as an unrolled loop over the layers
            (the faster training step, compile time growing with depth); deeper stacks run as one
            `lax.scan` (compile time flat in depth). 0 = always scan.
        scan_remat: a scanned stack recomputes each layer's forward inside the backward pass
            (`jax.checkpoint`, nothing saved but the layer inputs) instead of keeping every layer's
            intermediates in stacked (L, ...) buffers. None (default) = on where JAX's default
            backend is a CPU when the model is built, off elsewhere: on a CPU writing and reading
            those buffers costs more than recomputing (a 32-seed 12-layer init study 0.82-0.86x, a
            1000-layer one 0.77-0.83x, a 24-layer d=128 training step 0.92x plain and 0.97x probed,
            d=256 no change; benchmarks/README.md), while an accelerator pays for the recomputed
            matmuls. True / False force it. Unrolled stacks never recompute. Same numbers up to
            float rounding.

    Placement and norm options (ignored by placements/norms that do not use them):
        b2t_rescale: B2T: multiply every projection weight of the layer by L**-0.5, as the official
            code does since 2023-05-18 (off = the paper's form).
        residual_scale: ResiDual's dual-stream scale s (`*_res_input_norm_scale`; function-preserving).
        skip_lambda: skip_scale's fixed λ in LN(λ·x + F(x)) (Liu et al. 2021).
        rsln_steps: rsln's recursion order λ in {1, 2, ...}; 1 is Post-LN.
        admin_init: Admin's ω: "profile" (the paper's variance profiling on a random batch at init) or
            "constant" (admin_torch's profiling-free sqrt((n+1)/ln(n+1) - 1)).
        mix_post_fraction: Mix-LN: the first floor(fraction * L) layers are Post-LN, the rest Pre-LN.
        normformer_resid_scale: NormFormer's learnable residual scale λ_res on the FFN residual.
        adanorm_scale, adanorm_k: AdaNorm's C and k in C·(1 - k·y)⊙y.
        dyt_alpha0: DyT's initial a in γ⊙tanh(a·x) + β.
    """

    arch: str = "decoder"
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
    activation: str = "relu"
    dropout: float = 0.0
    bias: bool = False
    init: str = "xavier_uniform"
    embed_std: float | None = None
    embed_scale: float | None = None
    pos: str = "sinusoidal"
    tie_embeddings: bool = False
    gpt2_scaled_init: bool = False
    dtype: str = "float32"
    norm_eps: float = 1e-5
    b2t_rescale: bool = False
    residual_scale: float = 1.0
    skip_lambda: float = 1.0
    rsln_steps: int = 2
    admin_init: str = "profile"
    mix_post_fraction: float = 0.25
    normformer_resid_scale: bool = False
    adanorm_scale: float = 1.0
    adanorm_k: float = 0.1
    dyt_alpha0: float = 0.5
    unroll_layers: int = 18
    compute_dtype: str | None = None
    scan_remat: bool | None = None

    def __post_init__(self) -> None:
        # Registries are imported here, not at module top, so that models.placements may import this
        # module for type hints without a cycle.
        from models.norms import NORMS
        from models.placements import PLACEMENTS

        _choice("arch", self.arch, ARCHS)
        _choice("placement", self.placement, list(PLACEMENTS))
        if self.enc_placement is not None:
            if self.arch != "encdec":
                raise ValueError(f"enc_placement is only for arch='encdec', got arch={self.arch!r}")
            _choice("enc_placement", self.enc_placement, list(PLACEMENTS))
        _choice("norm", self.norm, list(NORMS))
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("init", self.init, INITS)
        _choice("pos", self.pos, POSITIONS)
        _choice("dtype", self.dtype, DTYPES)
        _choice("admin_init", self.admin_init, ADMIN_INITS)
        for name in ("layers", "d_model", "heads", "d_ff", "vocab", "max_len", "rsln_steps"):
            _positive_int(name, getattr(self, name))
        if self.compute_dtype is not None:
            _choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
            if self.dtype != "float32":
                raise ValueError(f"compute_dtype={self.compute_dtype!r} needs dtype='float32', got dtype={self.dtype!r}")
        if not isinstance(self.unroll_layers, int) or isinstance(self.unroll_layers, bool) or self.unroll_layers < 0:
            raise ValueError(f"unroll_layers must be an integer >= 0 (0 = always scan), got {self.unroll_layers!r}")
        if not (self.scan_remat is None or isinstance(self.scan_remat, bool)):
            raise ValueError(f"scan_remat must be None (on for a CPU backend), True or False, got {self.scan_remat!r}")
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
        _finite("mix_post_fraction", self.mix_post_fraction, low=0.0)
        if self.mix_post_fraction > 1.0:
            raise ValueError(f"mix_post_fraction must be in [0, 1], got {self.mix_post_fraction!r}")
        _finite("adanorm_scale", self.adanorm_scale, low=0.0, strict=True)
        _finite("adanorm_k", self.adanorm_k, low=0.0)
        _finite("dyt_alpha0", self.dyt_alpha0)
        for name in ("embed_std", "embed_scale"):
            if getattr(self, name) is not None:
                _finite(name, getattr(self, name), low=0.0, strict=True)
        if self.dtype == "float64":
            import jax

            if not jax.config.jax_enable_x64:
                raise ValueError(
                    "dtype='float64' needs jax x64 mode: call jax.config.update('jax_enable_x64', True) first"
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

    def replace(self, **changes: object) -> "ModelConfig":
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def stacks(self) -> tuple["StackSpec", ...]:
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


@dataclass(frozen=True)
class StackSpec:
    """One layer stack of a model: what a placement needs to know to wire and initialize it."""

    name: str  # "encoder" | "decoder"
    placement: str
    layers: int
    causal: bool
    cross: bool  # decoder of an encdec: self-attention, cross-attention, FFN
    arch: str
    enc_layers: int
    dec_layers: int

    @property
    def sublayers(self) -> tuple[str, ...]:
        """Sublayer kinds of one layer, in order (TransformerLens names)."""
        return ("attn", "cross", "mlp") if self.cross else ("attn", "mlp")
