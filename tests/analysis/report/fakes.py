"""A tiny fake experiment and a synthetic atlas study, so the report's tests exercise the whole
pipeline (data, checks, figures, HTML, markdown) in seconds without probing or training anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.experiments import atlas
from analysis.experiments.claims import Claim, Feature, ratio
from analysis.io import write_run
from analysis.plot.figures import plot_layer_profile
from analysis.probe.tidy import COLUMNS, DTYPES

ATLAS = atlas.AtlasSettings(layers=3, seeds=2, placements=("post", "pre"))


def _rows(
    run: str,
    arch: str,
    placement: str,
    layers: int,
    seed: int,
    quantity: str,
    site: str,
    values: np.ndarray,
    other: np.ndarray | None = None,
) -> pd.DataFrame:
    n = len(values)
    return pd.DataFrame(
        {
            "run": run,
            "arch": arch,
            "placement": placement,
            "norm": "layernorm",
            "layers": layers,
            "d_model": 64,
            "seed": seed,
            "step": 0,
            "stack": "decoder",
            "layer": np.arange(n) if other is None else other[0],
            "site": site,
            "quantity": quantity,
            "value": values.astype(float),
            "other_layer": np.full(n, -1) if other is None else other[1],
        }
    )


def atlas_frame(settings: atlas.AtlasSettings = ATLAS) -> pd.DataFrame:
    """Every quantity the atlas draws, with made-up but plausible per-layer values."""
    rng = np.random.default_rng(0)
    L = settings.layers
    parts = []
    for arch, _, _ in atlas.ARCH_PANELS:
        for placement in settings.placements:
            run = f"init/{arch}/{placement}"
            for seed in range(settings.seeds):
                grow = np.exp(np.arange(L) * (0.5 if placement == "post" else -0.2)) * (1 + 0.1 * rng.random(L))
                for quantity, site, values in (
                    ("act_grad_norm", "resid_pre", grow[::-1]),
                    ("param_grad_norm", "mlp.w2.weight", grow),
                    ("update_ratio", "mlp", 1 / (1 + np.arange(L))),
                    ("act_norm", "resid_pre", np.sqrt(1 + np.arange(L))),
                    ("ln_jacobian_gain", "mlp_ln", 0.7 + 0.05 * rng.random(L)),
                    ("cos_adjacent", "resid_pre", np.linspace(0.6, 0.9, L - 1)),
                ):
                    parts.append(_rows(run, arch, placement, L, seed, quantity, site, values))
                rows, cols = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
                cka = np.exp(-np.abs(rows - cols).ravel() / 2)
                parts.append(
                    _rows(run, arch, placement, L, seed, "cka", "resid_post", cka, (rows.ravel(), cols.ravel()))
                )
    return pd.concat(parts, ignore_index=True)[list(COLUMNS)].astype(DTYPES)


def store_atlas(out: Path, settings: atlas.AtlasSettings = ATLAS) -> None:
    """Write a synthetic atlas study where `build_report` will find and reuse it."""
    write_run(
        atlas_frame(settings),
        {**settings.meta(), "key": settings.key(), "seconds": 0.0},
        Path(out) / "data" / "init.parquet",
    )


@dataclass
class FakeExperiment:
    """Duck-types analysis.experiments.Experiment: a tidy frame per run, two figures, three claims."""

    name: str = "fake2024"
    paper: str = "Doe and Roe 2024, A fake paper about norms (arXiv 0000.00000)"
    title: str = "a fake gradient ratio"
    summary: str = "A made-up experiment: `g` per layer for two placements over four seeds.\n\n- item one\n- item two"
    presets: dict = field(default_factory=lambda: {"quick": {"seeds": 4}, "paper": {"seeds": 16}})
    claims: tuple = ()
    fail: bool = False
    figures_fail: bool = False
    runs: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.claims = self.claims or fake_claims(self.name)

    def run(self, preset: str, store: Path | None = None) -> pd.DataFrame:
        self.runs.append((preset, store))
        if self.fail:
            raise RuntimeError("fake experiment blew up")
        parts = []
        for placement, slope in (("post", 1.0), ("pre", -0.3)):
            for seed in range(4):
                values = np.exp(slope * np.arange(3)) * (1 + 0.05 * seed)
                values[-1] *= 1 + 0.1 * (seed - 1.5)  # a seed spread, so the intervals have a width
                parts.append(_rows(f"fake/{placement}", "decoder", placement, 3, seed, "g", "resid_pre", values))
        return pd.concat(parts, ignore_index=True)[list(COLUMNS)].astype(DTYPES)

    def figures(self, frame: pd.DataFrame) -> dict:
        if self.figures_fail:
            plt.figure()  # left open: the report must close it
            raise ValueError("Data cannot be log-scaled because all values are <= 0.")
        out = {}
        for name, logy in (("profile", False), ("profile_log", True)):
            fig, ax = plt.subplots(figsize=(4, 3))
            plot_layer_profile(frame, ax, quantity="g", site="resid_pre", stack="decoder", logy=logy)
            fig.suptitle(f"g per layer ({'log' if logy else 'linear'} axis)")
            out[name] = fig
        return out


def fake_claims(experiment: str) -> tuple:
    """Three real claims (analysis.experiments.claims) on the fake frame: post's top/bottom ratio
    (≈ e² ≈ 7.4, with a seed spread) against thresholds it clears, misses, and straddles."""
    where = {"placement": "post", "quantity": "g", "site": "resid_pre"}
    stat = ratio(Feature("top", where, layer=-1), Feature("bottom", where, layer=0), "g_top/g_bottom of post")
    common = dict(
        paper="xiong2020",
        source="Fig. 1 (fake)",
        experiment=experiment,
        statistic=stat,
        threshold_note="made up for the test",
    )
    return (
        Claim(
            id=f"xiong2020.{experiment}_big",
            statement="post's top/bottom ratio is at least 5",
            method_form="paper form",
            threshold=5.0,
            direction=">=",
            **common,
        ),
        Claim(
            id=f"xiong2020.{experiment}_small",
            statement="post's ratio is at most 2",
            method_form="code form",
            threshold=2.0,
            direction="<=",
            **common,
        ),
        Claim(
            id=f"xiong2020.{experiment}_noisy",
            statement="post's ratio lies in [7.3, 9]",
            method_form="paper form",
            threshold=(7.3, 9.0),
            direction="in",
            **common,
        ),
    )
