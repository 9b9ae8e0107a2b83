"""Representation probes: cosines and linear CKA between layers, and attention entropies.

They compare the stacked (L, B, T, D) stream sites across layers (analysis.probe.similarity), or read
what the attention layers record. Equations: docs/probes.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import jax

from analysis.memory import ProbeMemory
from analysis.probe import similarity
from analysis.probe.reductions import no_stack_level
from analysis.probe.registry import Probe, ProbeContext, register_probe
from analysis.probe.tidy import head_rows, pairwise_rows

CkaNull = Literal["full", "half", "off"]
CKA_NULLS: tuple[str, ...] = get_args(CkaNull)


@dataclass(frozen=True)
class CosineOptions:
    """Options of cos_adjacent and cos_to_last (flat keyword prefix `similarity_`).

    Attributes:
        sites: the stream sites compared across layers (and their ResiDual `dual_*` twins).
    """

    sites: tuple[str, ...] = ("resid_pre", "resid_post")

    def __post_init__(self) -> None:
        if isinstance(self.sites, str) or not all(isinstance(s, str) for s in self.sites):
            raise ValueError(f"similarity_sites must be a tuple of site names, got {self.sites!r}")
        object.__setattr__(self, "sites", tuple(self.sites))  # hashable: part of the compile key


@dataclass(frozen=True)
class CKAOptions:
    """Options of cka (flat keyword prefix `cka_`: `cka_tokens`, `cka_null`, `cka_debiased`).

    Attributes:
        tokens: CKA and its null on a random subsample of this many of the B·T tokens (drawn with the
            probe key, the same tokens for every layer); None = every token. CKA's cost grows as
            tokens² (Gram path) or tokens·D² (feature path), so a subsample is what makes it
            affordable every training step; the rows' site then reads `resid_post@{m}tok`.
        null: "full" (every ordered pair under one permutation), "half" (pairs i <= j, mirrored:
            half the work, see similarity.stack_cka_null; the null's site gets "/half"), or "off".
        debiased: unbiased-HSIC CKA (default; the biased one reads ≈0.2 on unrelated data).
    """

    tokens: int | None = None
    null: CkaNull = "full"
    debiased: bool = True

    def __post_init__(self) -> None:
        tokens = self.tokens
        if tokens is not None and (not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 4):
            raise ValueError(f"cka_tokens must be None (all tokens) or an integer >= 4, got {self.tokens!r}")
        if self.null not in CKA_NULLS:
            raise ValueError(f"unknown cka_null {self.null!r}; valid: {', '.join(CKA_NULLS)}")
        if not isinstance(self.debiased, bool):
            raise ValueError(f"cka_debiased must be True or False, got {self.debiased!r}")


def cka_sites(options: CKAOptions, n_tokens: int, site: str = "resid_post") -> tuple[str, str]:
    """Row site names of (cka, cka_null) for a stack of `n_tokens` tokens: the choice of token
    subsample and null pairs is written into the rows, so differently measured values never mix."""
    if options.tokens is not None and options.tokens < n_tokens:
        site = f"{site}@{options.tokens}tok"
    return site, f"{site}/half" if options.null == "half" else site


def _cka_stack(h: jax.Array, key: jax.Array, options: CKAOptions) -> tuple[jax.Array, jax.Array | None]:
    """(cka, null or None) of a (L, B, T, D) site under `options` (subsample, null pairs)."""
    h = h.reshape(h.shape[0], -1, h.shape[-1])  # (L, n, D)
    if options.tokens is not None and options.tokens < h.shape[1]:
        idx = jax.random.choice(jax.random.fold_in(key, 1), h.shape[1], (options.tokens,), replace=False)
        h = h[:, idx]
    cka = similarity.stack_cka(h, debiased=options.debiased)
    if options.null == "off":
        return cka, None
    return cka, similarity.stack_cka_null(h, key, debiased=options.debiased, half=options.null == "half")


def _cosines(ctx: ProbeContext, options: CosineOptions, fn) -> dict:
    sites = (*options.sites, *(f"dual_{x}" for x in options.sites))
    return no_stack_level(
        {name: {site: fn(s["layers"][site]) for site in sites if site in s["layers"]} for name, s in ctx.sites.items()}
    )


def cos_adjacent(ctx: ProbeContext, options: CosineOptions) -> dict:
    """mean_t ⟨x_t, y_t⟩/(‖x_t‖‖y_t‖) between layer l and l+1 (L−1 values, row layer = l)."""
    return {"cos_adjacent": _cosines(ctx, options, similarity.stack_cosine_adjacent)}


def cos_to_last(ctx: ProbeContext, options: CosineOptions) -> dict:
    """mean_t ⟨x_t, y_t⟩/(‖x_t‖‖y_t‖) between layer l and the last layer."""
    return {"cos_to_last": _cosines(ctx, options, similarity.stack_cosine_to_last)}


def cka(ctx: ProbeContext, options: CKAOptions) -> dict:
    """Linear CKA(X, Y) = HSIC(K, L)/sqrt(HSIC(K, K)·HSIC(L, L)), K = XXᵀ, L = YYᵀ, between every pair
    of layers' resid_post with the B·T tokens as examples (Kornblith et al. 2019; debiased HSIC of
    Song et al. 2012 as in Nguyen, Raghu & Kornblith 2021), and cka_null: the same after one random
    permutation of the second argument's tokens (what CKA reads on unrelated representations)."""
    cka_key = jax.random.fold_in(ctx.key, 1)
    out: dict = {"cka": {}, "cka_null": {}}
    for name, s in ctx.sites.items():
        h = s["layers"]["resid_post"]
        site, null_site = cka_sites(options, h[0].size // h.shape[-1])
        value, null = _cka_stack(h, cka_key, options)
        out["cka"][name] = {"layers": {site: value}, "stack": {}}
        if null is not None:
            out["cka_null"][name] = {"layers": {null_site: null}, "stack": {}}
    if not out["cka_null"]:
        del out["cka_null"]
    return out


def attn_entropy(ctx: ProbeContext, options: None) -> dict:
    """−Σ_s p_s log p_s (nats) per layer and head, averaged over batch and query positions; uniform
    attention over T keys gives log T. Recorded by the attention layers themselves (stats)."""
    return {
        "attn_entropy": no_stack_level(
            {name: {k: v for k, v in st["layers"].items() if k.endswith("_entropy")} for name, st in ctx.stats.items()}
        )
    }


register_probe(
    Probe(
        "cos_adjacent",
        "mean per-token cosine between consecutive layers (resid_pre and resid_post)",
        cos_adjacent,
        options=CosineOptions,
        option_prefix="similarity",
        memory=ProbeMemory(stream_stack=True),
    )
)
register_probe(
    Probe(
        "cos_to_last",
        "mean per-token cosine between each layer and the last one",
        cos_to_last,
        options=CosineOptions,
        option_prefix="similarity",
        memory=ProbeMemory(stream_stack=True),
    )
)
register_probe(
    Probe(
        "cka",
        "linear CKA between every pair of layers' resid_post, and its shuffled-token null",
        cka,
        quantities={"cka": pairwise_rows, "cka_null": pairwise_rows},
        options=CKAOptions,
        memory=ProbeMemory(stream_stack=True, layer_pairs=2),
    )
)
register_probe(
    Probe(
        "attn_entropy",
        "mean attention entropy per layer and head (nats)",
        attn_entropy,
        quantities={"attn_entropy": head_rows},
    )
)
