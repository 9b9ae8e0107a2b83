"""Geometry probes, the quantities the 2024-26 depth papers read: how far apart the layers'
representations are (angular distance), how many directions a layer's tokens use (effective and
stable rank), and how large its largest coordinates are against the typical one (massive
activations). Equations: docs/probes.md.

All four are opt-in (cost "costly"): they are not part of the default probe set, so the probed
training step and `lnscope probe` without --probes compute what they did before. Angular distance
compares every pair of layers' stacked streams; the ranks take one SVD per layer (and per sequence);
massive activations sort each layer's coordinates for their median. Rank and massive activations are
reduced inside each layer of the forward pass (`Needs.summary`), so they never stack the stream.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import jax
import jax.numpy as jnp

from analysis.memory import ProbeMemory
from analysis.probe.reductions import no_stack_level
from analysis.probe.registry import Needs, Probe, ProbeContext, register_probe
from analysis.probe.representations import CosineOptions
from analysis.probe.tidy import pairwise_rows
from models.dtypes import upcast

RankTokens = Literal["sequence", "batch"]
RANK_TOKENS: tuple[str, ...] = get_args(RankTokens)
Centring = Literal["both", "raw", "centred"]
CENTRINGS: tuple[str, ...] = get_args(Centring)


def _check_sites(prefix: str, sites: object) -> tuple[str, ...]:
    if isinstance(sites, str) or not isinstance(sites, (tuple, list)) or not all(isinstance(s, str) for s in sites):
        raise ValueError(f"{prefix}_sites must be a tuple of site names, got {sites!r}")
    if not sites:
        raise ValueError(f"{prefix}_sites must name at least one site, e.g. ('resid_post',)")
    return tuple(sites)  # hashable: part of the compile key


# ------------------------------------------------------------------------------------------------
# Angular distance between layers
# ------------------------------------------------------------------------------------------------
def stack_angular_distance(h: jax.Array) -> jax.Array:
    """Angular distance between every pair of layers: arccos(mean_t cos_t)/π.

    cos_t = ⟨x_t, y_t⟩/(‖x_t‖‖y_t‖) per token position t (a zero vector: cosine 0, as
    similarity.token_cosine), averaged over all B·T positions, then arccos and divided by π: 0 for
    the same direction at every token, ½ for orthogonal, 1 for opposite. Entry (l, l+n) is the
    distance between layer l and layer l+n (Gromov et al. 2024, "The Unreasonable Ineffectiveness of
    the Deeper Layers", eq. 7, who average it over their data; the curse-of-depth and Mix-LN
    papers' measure of how much a layer changes the representation). n = 1 is the adjacent
    layers' arccos(cos_adjacent)/π.

    Precision: 1 − mean_t cos_t is evaluated as mean_t ‖u_t − v_t‖²/2 of the unit vectors (not as
    1 − a cosine near 1), and the angle as 2·arcsin(√(that/2)), so the small angles between the
    deep layers of a Pre-LN stack keep their float32 accuracy instead of the ~1e-3·π floor of
    arccos of a rounded cosine.

    Args:
        h: (L, ..., D) stacked layer representations.

    Returns:
        (L, L) symmetric matrix; its diagonal is 0 (unless a layer has a zero vector at some token).
    """
    h = upcast(jnp.asarray(h))
    h = h.reshape(h.shape[0], -1, h.shape[-1])  # (L, n, D)
    norm = jnp.sqrt(jnp.sum(jnp.square(h), axis=-1))  # (L, n)
    valid = norm > 0
    unit = h / jnp.where(valid, norm, 1.0)[..., None]

    def row(args: tuple[jax.Array, jax.Array]) -> jax.Array:
        u, ok = args  # (n, D), (n,)
        half_sq = 0.5 * jnp.sum(jnp.square(u[None] - unit), axis=-1)  # 1 − cos_t for unit vectors: (L, n)
        return jnp.mean(jnp.where(ok[None] & valid, half_sq, 1.0), axis=-1)

    one_minus_cos = jax.lax.map(row, (unit, valid))  # (L, L)
    return 2.0 * jnp.arcsin(jnp.sqrt(jnp.clip(one_minus_cos / 2.0, 0.0, 1.0))) / jnp.pi


def angular_distance(ctx: ProbeContext, options: CosineOptions) -> dict:
    """d(l, m) = arccos(mean_t ⟨x_t^l, x_t^m⟩/(‖x_t^l‖‖x_t^m‖))/π between the streams of every pair of
    layers l, m (all n = m − l at once: rows (layer, other_layer)); Gromov et al. 2024 (arXiv
    2403.17887), the curse-of-depth (Sun et al. 2025) and Mix-LN (Li et al. 2024) measure."""
    sites = (*options.sites, *(f"dual_{x}" for x in options.sites))
    return {
        "angular_distance": no_stack_level(
            {
                name: {site: stack_angular_distance(s["layers"][site]) for site in sites if site in s["layers"]}
                for name, s in ctx.sites.items()
            }
        )
    }


# ------------------------------------------------------------------------------------------------
# Effective and stable rank
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RankOptions:
    """Options of effective_rank and stable_rank (flat keyword prefix `rank_`).

    Attributes:
        sites: the sites whose (tokens × features) matrices are ranked in every layer.
        tokens: "sequence": each sequence's T × D matrix, its rank averaged over the B sequences
            (the rank collapse of Dong et al. 2021 is within a sequence: all tokens alike); "batch":
            the B·T × D matrix of every token of the batch (how many directions the layer uses at
            all). Rows of "batch" carry the site `{site}/batch`.
        centring: "raw" (X as it is), "centred" (X − its token mean, per feature: a stream whose
            tokens share one large mean direction reads rank ≈ 1 raw, and its spread around that
            direction centred; site `{site}/centred`) or "both".
    """

    sites: tuple[str, ...] = ("resid_post",)
    tokens: RankTokens = "sequence"
    centring: Centring = "both"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", _check_sites("rank", self.sites))
        if self.tokens not in RANK_TOKENS:
            raise ValueError(f"unknown rank_tokens {self.tokens!r}; valid: {', '.join(RANK_TOKENS)}")
        if self.centring not in CENTRINGS:
            raise ValueError(f"unknown rank_centring {self.centring!r}; valid: {', '.join(CENTRINGS)}")


def rank_site(site: str, options: RankOptions, centred: bool) -> str:
    """The row site of one measured variant: how the matrix was formed is written into the rows, so
    differently measured ranks never mix."""
    return site + ("/centred" if centred else "") + ("/batch" if options.tokens == "batch" else "")


def singular_values(x: jax.Array, centred: bool = False) -> jax.Array:
    """Singular values, descending, of the (n, D) matrices of `x` (..., n, D), after subtracting the
    mean over the n rows when `centred`. Returns (..., min(n, D))."""
    x = upcast(jnp.asarray(x))
    if centred:
        x = x - jnp.mean(x, axis=-2, keepdims=True)
    return jnp.linalg.svd(x, compute_uv=False)


def effective_rank_of(s: jax.Array) -> jax.Array:
    """Roy & Vetterli's effective rank exp(−Σ_i p_i log p_i), p_i = σ_i/Σ_j σ_j, of singular values
    `s` (..., k) (0·log 0 = 0); between 1 and the rank; 0 for a zero matrix."""
    total = jnp.sum(s, axis=-1, keepdims=True)
    p = s / jnp.where(total > 0, total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
    return jnp.where(total[..., 0] > 0, jnp.exp(entropy), 0.0)


def stable_rank_of(s: jax.Array) -> jax.Array:
    """Stable rank ‖X‖_F²/‖X‖₂² = Σ_i σ_i²/max_i σ_i² of singular values `s` (..., k); between 1 and
    the rank; 0 for a zero matrix."""
    top = jnp.max(s, axis=-1)
    return jnp.where(top > 0, jnp.sum(jnp.square(s), axis=-1) / jnp.where(top > 0, top, 1.0) ** 2, 0.0)


def _rank_summary(of, options: RankOptions, layer: Mapping[str, jax.Array], eps: float) -> dict:
    """One layer's ranks {row site: ()} of the (B, T, D) sites `options` names (those present)."""
    out = {}
    variants = {"raw": (False,), "centred": (True,), "both": (False, True)}[options.centring]
    for site in options.sites:
        if site not in layer:
            continue
        x = jax.lax.stop_gradient(layer[site])  # a measurement: no derivative through the SVD
        if options.tokens == "batch":
            x = x.reshape(-1, x.shape[-1])
        else:
            x = x.reshape(-1, x.shape[-2], x.shape[-1])  # (B, T, D)
        for centred in variants:
            out[rank_site(site, options, centred)] = jnp.mean(of(singular_values(x, centred)))
    return out


def _rank_needs(of):
    return lambda options: Needs(summary=functools.partial(_rank_summary, of, options))


def effective_rank(ctx: ProbeContext, options: RankOptions) -> dict:
    """erank(X) = exp(−Σ_i p_i log p_i), p_i = σ_i/Σ_j σ_j over the singular values σ of a layer's
    tokens × features matrix X (Roy & Vetterli 2007, "The effective rank: a measure of effective
    dimensionality"); per sequence (mean over sequences) or over the batch, raw and/or centred
    (RankOptions). Computed inside each layer."""
    return {"effective_rank": no_stack_level({name: ctx.summary[name]["effective_rank"] for name in ctx.sites})}


def stable_rank(ctx: ProbeContext, options: RankOptions) -> dict:
    """srank(X) = ‖X‖_F²/‖X‖₂² = Σ_i σ_i²/σ_max² of a layer's tokens × features matrix X (Rudelson &
    Vershynin 2007); per sequence (mean over sequences) or over the batch, raw and/or centred
    (RankOptions). Computed inside each layer."""
    return {"stable_rank": no_stack_level({name: ctx.summary[name]["stable_rank"] for name in ctx.sites})}


# ------------------------------------------------------------------------------------------------
# Massive activations
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MassiveOptions:
    """Options of massive_activations (flat keyword prefix `massive_`).

    Attributes:
        sites: the sites measured in every layer (the hidden state: the stream after the layer).
    """

    sites: tuple[str, ...] = ("resid_post",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", _check_sites("massive", self.sites))


def _massive_summary(options: MassiveOptions, layer: Mapping[str, jax.Array], eps: float) -> dict:
    out: dict = {"massive_activations": {}, "max_abs_activation": {}}
    for site in options.sites:
        if site not in layer:
            continue
        a = jnp.abs(upcast(jax.lax.stop_gradient(layer[site]))).reshape(-1)
        top = jnp.max(a)
        out["massive_activations"][site] = top / jnp.median(a)
        out["max_abs_activation"][site] = top
    return out


def massive_activations(ctx: ProbeContext, options: MassiveOptions) -> dict:
    """max |x| / median |x| over all B·T·D coordinates of a layer's hidden state (the ratio Sun et al.
    2024, "Massive Activations in Large Language Models", read: their massive activations are
    ~1000× the median magnitude), and max |x| itself (max_abs_activation: their other criterion is
    an absolute size, > 100); the concern of Peri-LN (Kim et al. 2025) and OLMo-2's output norm.
    Computed inside each layer."""
    per_stack = {name: ctx.summary[name]["massive_activations"] for name in ctx.sites}
    return {
        quantity: no_stack_level({name: s[quantity] for name, s in per_stack.items()})
        for quantity in ("massive_activations", "max_abs_activation")
    }


register_probe(
    Probe(
        "angular_distance",
        "arccos(mean per-token cosine)/π between every pair of layers' streams (resid_pre, resid_post)",
        angular_distance,
        quantities={"angular_distance": pairwise_rows},
        options=CosineOptions,
        option_prefix="similarity",
        cost="costly",
        memory=ProbeMemory(stream_stack=True, layer_pairs=2),
    )
)
register_probe(
    Probe(
        "effective_rank",
        "exp(entropy of the normalized singular values) of each layer's tokens × features (Roy-Vetterli)",
        effective_rank,
        needs=_rank_needs(effective_rank_of),
        options=RankOptions,
        option_prefix="rank",
        cost="costly",
    )
)
register_probe(
    Probe(
        "stable_rank",
        "‖X‖_F²/‖X‖₂² of each layer's tokens × features matrix X",
        stable_rank,
        needs=_rank_needs(stable_rank_of),
        options=RankOptions,
        option_prefix="rank",
        cost="costly",
    )
)
register_probe(
    Probe(
        "massive_activations",
        "max |x| / median |x| over each layer's hidden state (and max |x|)",
        massive_activations,
        needs=lambda options: Needs(summary=functools.partial(_massive_summary, options)),
        quantities={"massive_activations": None, "max_abs_activation": None},
        options=MassiveOptions,
        option_prefix="massive",
        cost="costly",
    )
)
