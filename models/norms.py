"""Normalization operators: the `NORMS` registry (any placement x any norm).

Each entry maps a name to a constructor `(width, cfg, rngs) -> nnx.Module` whose call normalizes the
last axis. Statistics are computed in at least float32 (bfloat16 means and variances drift), and the
result is cast back to the input dtype. ε sits inside the square root everywhere (the common
convention); the official RMSNorm and AdaNorm code put it outside, a difference of order ε/σ.

Notation: for x in R^d, μ = mean(x), σ² = mean((x − μ)²) (biased, as the papers write it),
y = (x − μ)/sqrt(σ² + ε), and sg(·) is stop-gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from models.dtypes import reduction_dtype

if TYPE_CHECKING:  # for annotations only: models.config imports this registry
    from models.config import ModelConfig

sg = jax.lax.stop_gradient


def _stat_dtype(x: jax.Array) -> jnp.dtype:
    return reduction_dtype(x.dtype)


def standardize(x: jax.Array, eps: float, *, detach_mean: bool = False, detach_var: bool = False) -> jax.Array:
    """y = (x − μ)/sqrt(σ² + ε) over the last axis, optionally treating μ and/or σ as constants.

    With both detached this is Xu et al.'s DetachNorm forward and backward: ∂y/∂x = I/σ.
    """
    x32 = x.astype(_stat_dtype(x))
    mu = jnp.mean(x32, axis=-1, keepdims=True)
    if detach_mean:
        mu = sg(mu)
    var = jnp.mean(jnp.square(x32 - mu), axis=-1, keepdims=True)
    if detach_var:
        var = sg(var)
    return (x32 - mu) * jax.lax.rsqrt(var + eps)


class LayerNorm(nnx.Module):
    """LN(x) = γ ⊙ y + β with γ = 1, β = 0 at init (Ba et al. 2016)."""

    def __init__(self, width: int, cfg: ModelConfig, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.eps = cfg.norm_eps
        self.gain = nnx.Param(jnp.ones((width,), dtype))
        self.bias = nnx.Param(jnp.zeros((width,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = standardize(x, self.eps)
        return (y * self.gain[...].astype(y.dtype) + self.bias[...].astype(y.dtype)).astype(x.dtype)


class LayerNormSimple(nnx.Module):
    """LayerNorm-simple: z = y, LN without gain and bias (Xu et al. 2019, §3; code mode `nowb`)."""

    def __init__(self, width: int, cfg: ModelConfig, rngs: nnx.Rngs):
        self.eps = cfg.norm_eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return standardize(x, self.eps).astype(x.dtype)


class DetachNorm(nnx.Module):
    """DetachNorm: z = (x − sg(μ))/sg(σ) (Xu et al. 2019, §4; code flags --mean_detach/--std_detach).

    Forward equals LayerNorm-simple; backward skips the re-centring (mean) and/or the projection away
    from y (variance). `detach_mean` / `detach_var` registry entries detach only one statistic.
    """

    def __init__(self, width: int, cfg: ModelConfig, rngs: nnx.Rngs, *, mean: bool, var: bool):
        self.eps = cfg.norm_eps
        self.mean = mean
        self.var = var

    def __call__(self, x: jax.Array) -> jax.Array:
        return standardize(x, self.eps, detach_mean=self.mean, detach_var=self.var).astype(x.dtype)


class AdaNorm(nnx.Module):
    """AdaNorm: z = C·(1 − k·y) ⊙ y with φ(y) = C(1 − k·y) a constant in the backward pass.

    Xu et al. 2019, Eq. (6)-(8); k = 1/10 recommended (keeps 1 − k·y > 0 with high probability), no
    learnable gain or bias. Written as C·(y − sg(k·y)⊙y), exactly as the released code does. The code
    uses the unbiased σ with ε outside the root; we use the biased σ of the paper's formula.
    """

    def __init__(self, width: int, cfg: ModelConfig, rngs: nnx.Rngs):
        self.eps = cfg.norm_eps
        self.scale = cfg.adanorm_scale
        self.k = cfg.adanorm_k

    def __call__(self, x: jax.Array) -> jax.Array:
        y = standardize(x, self.eps)
        return (self.scale * (y - sg(self.k * y) * y)).astype(x.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm(x) = g ⊙ x / sqrt(mean(x²) + ε), g = 1 at init (Zhang & Sennrich 2019)."""

    def __init__(self, width: int, cfg: ModelConfig, rngs: nnx.Rngs):
        self.eps = cfg.norm_eps
        self.gain = nnx.Param(jnp.ones((width,), jnp.dtype(cfg.dtype)))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(_stat_dtype(x))
        ms = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        return (x32 * jax.lax.rsqrt(ms + self.eps) * self.gain[...].astype(x32.dtype)).astype(x.dtype)


class DyT(nnx.Module):
    """Dynamic Tanh: DyT(x) = γ ⊙ tanh(a·x) + β, scalar a (init a₀), γ = 1, β = 0.

    Zhu, Chen, He, LeCun, Liu 2025, "Transformers without Normalization" (`DynamicTanh`).
    """

    def __init__(self, width: int, cfg: ModelConfig, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.alpha = nnx.Param(jnp.asarray(cfg.dyt_alpha0, dtype))
        self.gain = nnx.Param(jnp.ones((width,), dtype))
        self.bias = nnx.Param(jnp.zeros((width,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(self.alpha[...] * x) * self.gain[...] + self.bias[...]


class Derf(nnx.Module):
    """Dynamic erf: Derf(x) = γ ⊙ erf(α·x + s) + β, scalars α (init α₀) and s (init s₀), γ = 1, β = 0.

    Chen, Lu, Zhu, Sun, Liu 2025, "Stronger Normalization-Free Transformers", arXiv 2512.10938 (Eq. 10).
    Element-wise, like DyT. α₀ = `derf_alpha0`, s₀ = `derf_shift0`: defaults 0.5 and 0, the official
    code's `Dynamic_erf` defaults (zlab-princeton/Derf; its GPT-2 patch starts α at 1.0 per slot);
    docs/placements.md, "Norms".
    """

    def __init__(self, width: int, cfg: ModelConfig, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.alpha = nnx.Param(jnp.asarray(cfg.derf_alpha0, dtype))
        self.shift = nnx.Param(jnp.asarray(cfg.derf_shift0, dtype))
        self.gain = nnx.Param(jnp.ones((width,), dtype))
        self.bias = nnx.Param(jnp.zeros((width,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.scipy.special.erf(self.alpha[...] * x + self.shift[...]) * self.gain[...] + self.bias[...]


class DyISRU(nnx.Module):
    """Dynamic inverse square root unit: γ ⊙ sqrt(C)·x / sqrt(β + x²), scalar β > 0, C the width.

    Stollenwerk 2025, "On the Mathematical Relationship Between Layer Normalization and Dynamic
    Activation Functions", arXiv 2503.21708: RMSNorm's x_i·sqrt(C)/sqrt(Σ_j x_j²) with Σ_{j≠i} x_j²
    replaced by one learnable β. β₀ = `dyisru_beta0`, default C − 1 (that sum for unit-RMS inputs).
    γ (init 1) is RMSNorm's gain, which the paper keeps apart from the activation. The official code
    (abcde17/dynamic-activation-functions, `DyISRU`) drops sqrt(C), adds ε inside the root and starts β
    at a per-run value (class default 100); docs/placements.md, "Norms".
    """

    def __init__(self, width: int, cfg: ModelConfig, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        beta0 = cfg.dyisru_beta0 if cfg.dyisru_beta0 is not None else width - 1.0
        self.scale = math.sqrt(width)
        self.beta = nnx.Param(jnp.asarray(beta0, dtype))
        self.gain = nnx.Param(jnp.ones((width,), dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(_stat_dtype(x))
        y = self.scale * x32 * jax.lax.rsqrt(self.beta[...].astype(x32.dtype) + jnp.square(x32))
        return (y * self.gain[...].astype(x32.dtype)).astype(x.dtype)


class Identity(nnx.Module):
    """No normalization: the placement's residual wiring without any norm (e.g. λ-skip without LN)."""

    def __init__(self, width: int, cfg: ModelConfig, rngs: nnx.Rngs):
        pass

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def _detach(mean: bool, var: bool) -> Callable[..., nnx.Module]:
    def make(width: int, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
        return DetachNorm(width, cfg, rngs, mean=mean, var=var)

    return make


NormFactory = Callable[[int, "ModelConfig", nnx.Rngs], nnx.Module]

NORMS: dict[str, NormFactory] = {
    "layernorm": LayerNorm,
    "layernorm_simple": LayerNormSimple,
    "rmsnorm": RMSNorm,
    "adanorm": AdaNorm,
    "detachnorm": _detach(mean=True, var=True),
    "detach_mean": _detach(mean=True, var=False),
    "detach_var": _detach(mean=False, var=True),
    "dyt": DyT,
    "identity": Identity,
    "derf": Derf,
    "dyisru": DyISRU,
}


def make_norm(width: int, cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
    """The configured norm (`cfg.norm`) for a feature axis of size `width`."""
    return NORMS[cfg.norm](width, cfg, rngs)
