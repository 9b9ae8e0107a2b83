"""Peri-LN (Kim et al. 2025) and OLMo 2's output norm (OLMo et al. 2025): massive activations.

    lnscope check --paper peri_olmo2 --preset quick --figures reports/experiments

Both papers put a norm on every sublayer's output (Peri-LN: h ← h + LN_out(S(LN(h))), with the
embedding normalized too; OLMo 2: h ← h + LN_out(S(h)), no input norm) and argue it bounds the
massive activations of Pre-LN's stream: a few coordinates of the hidden state orders of magnitude
above the rest (Sun et al. 2024 call them massive at ~1000x the median magnitude). We read the
per-layer max |x| / median |x| of the stream after each layer (the `massive_activations` probe) in
24-layer decoder-only Pre-LN, Peri-LN and OLMo-2 stacks, d_model 64 at quick, 8 seeds of random
tokens, at initialization (Pre-LN's job is shared with analysis/experiments/sun2025.py).

The papers measure trained models (Peri-LN after pre-training; OLMo 2 during
pre-training): massive activations grow during training. At initialization every stack's stream is a
sum of near-Gaussian branches, max/median is about 6 in all three, and the claims read as not
reproduced at our scale. A 300-step training run of the Markov task did not separate them either
(docs/experiments.md), so no training part is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.experiments.claims import Claim, Feature, Statistic, custom
from analysis.experiments.common import feature
from analysis.experiments.experiment import HARNESSES, Experiment, Harness
from analysis.experiments.sun2025 import DEPTH, deep_job

NAME = "peri_olmo2"
MASSIVE = ("massive_activations", "resid_post")  # max |x| / median |x| of the stream after each layer
VARIANTS = ("pre", "peri", "olmo2")


@dataclass(frozen=True)
class Preset:
    harness: Harness
    depth: int = DEPTH


PRESETS = {
    "tiny": Preset(HARNESSES["tiny"]),
    "quick": Preset(HARNESSES["quick"]),
    "paper": Preset(HARNESSES["paper"]),
}


def plan(p: Preset) -> dict:
    return {"deep": [deep_job(p.harness, pl, p.depth) for pl in VARIANTS]}


def _profile(variant: str) -> Feature:
    return feature(f"{variant}:massive", "deep", variant, MASSIVE, layer="all")


def peak_ratio(a: str, b: str) -> Statistic:
    """max over layers of a's seed-mean max|x|/median|x|, over the same of b's."""
    fa, fb = _profile(a), _profile(b)
    return custom(
        "ratio",
        f"largest per-layer max|x|/median|x| of the stream (seed means), {a} over {b}",
        (fa, fb),
        lambda m: np.max(m[fa.name], -1) / np.max(m[fb.name], -1),
    )


PAPER_PERI = "Peri-LN vs Pre-LN LMs (hundreds of millions to billions of parameters), pre-trained: hidden states"
PAPER_OLMO = "OLMo 2 pre-training (7B and larger): the output norm (with QK-norm) against growing activations"
OUR_SETTING = "24-layer decoder-only stacks, d=64, random tokens, 8 seeds, at init"
NOTE = (
    "a factor 2 set before any run: massive activations are orders of magnitude above the median, so an "
    "output norm that bounds them should at least halve the peak ratio; not calibrated: at init the "
    "calibration seeds 100-107 measured 1.12 [1.05, 1.19] (Peri-LN) and 1.09 [1.02, 1.20] (OLMo 2), the three "
    "stacks alike"
)


def claims() -> tuple[Claim, ...]:
    return (
        Claim(
            f"{NAME}.peri_bounds_massive",
            NAME,
            "Kim et al. 2025, Peri-LN (Pre-LN's massive activations; Peri-LN keeps hidden states bounded)",
            "Pre-LN's stream holds massive activations that Peri-LN bounds: the largest per-layer max|x|/median|x| "
            "of Pre-LN is at least twice Peri-LN's.",
            "Pre-LN vs Peri-LN (input and output norm on every sublayer, normalized embedding); at initialization",
            NAME,
            peak_ratio("pre", "peri"),
            2.0,
            ">=",
            NOTE,
            needs=("deep",),
            paper_setting=PAPER_PERI,
            our_setting=OUR_SETTING,
        ),
        Claim(
            f"{NAME}.olmo2_bounds_massive",
            NAME,
            "OLMo et al. 2025, OLMo 2 (the output norm for stability); Kim et al. 2025 for the mechanism",
            "Pre-LN's stream holds massive activations that OLMo 2's output norm bounds: the largest per-layer "
            "max|x|/median|x| of Pre-LN is at least twice OLMo 2's.",
            "Pre-LN vs OLMo 2's placement (output norm only, no QK-norm, the harness's FFN); at initialization",
            NAME,
            peak_ratio("pre", "olmo2"),
            2.0,
            ">=",
            NOTE,
            needs=("deep",),
            paper_setting=PAPER_OLMO,
            our_setting=OUR_SETTING,
        ),
    )


CLAIMS = claims()


def figures(frame: pd.DataFrame) -> dict:
    from analysis.plot import figures as F  # lazy: matplotlib only to draw, so `lnscope --help` starts fast

    d = frame[frame["part"] == "deep"]
    if d.empty:
        return {}
    fig, axes = F.figure_grid(1, ncols=1, panel_size=(5.2, 3.8))
    F.plot_lines(
        d,
        axes[0],
        x="layer",
        where={"stack": "decoder", "quantity": MASSIVE[0], "site": MASSIVE[1]},
        logy=False,
        xlabel="layer l (0 = bottom)",
        ylabel="max |x| / median |x| of the stream",
        title=f"massive activations after each layer, {int(d['layers'].max())}-layer decoder at init",
    )
    return {"peri_olmo2_massive": fig}


EXPERIMENT = Experiment(
    name=NAME,
    paper="Kim et al. 2025, 'Peri-LN: Revisiting Layer Normalization in the Transformer Architecture', arXiv "
    "2502.02732; OLMo et al. 2025, '2 OLMo 2 Furious', arXiv 2501.00656",
    title="An output norm (Peri-LN, OLMo 2) bounds the massive activations of Pre-LN's stream",
    summary=__doc__.split("\n\n", 2)[2],
    command="lnscope check --paper peri_olmo2",
    presets=PRESETS,
    plan=plan,
    figures=figures,
    claims=CLAIMS,
)
