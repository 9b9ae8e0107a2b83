"""Figure styles: one fixed color and marker per placement in every figure of the project.

With hue ``placement`` every line takes its placement's color and marker; with hue ``variant`` (a
placement in one form of its method, the experiments' column) the variant takes its placement's
color and forms of one placement differ by line style. Other hues (a site, a norm), and variants that
all stand for one placement, get colors of a separate palette in order of first appearance.
This module does not import ``models``; a test checks the palette covers ``models.PLACEMENTS``.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

_MARKERS = "osD^vP*Xh<>p"

# One color and marker per placement, in every figure (registry order of models.PLACEMENTS; this
# module does not import models, and tests/analysis/plot/test_figures.py checks it covers them all).
# tab20: the dark shades (= tab10) first, then the light ones.
_TAB20 = plt.get_cmap("tab20").colors
_PALETTE = [_TAB20[i] for i in (*range(0, 20, 2), *range(1, 20, 2))] + list(plt.get_cmap("tab20b").colors[::2])
_PLACEMENT_ORDER = (
    "post",
    "pre",
    "b2t",
    "residual",
    "skip_scale",
    "rsln",
    "deepnorm",
    "admin",
    "sandwich",
    "peri",
    "mix",
    "hybrid",
    "normformer",
    "rezero",
    "none",
    "lns",
    "completep",
    "deepscalelm",
    "olmo2",
    "layerscale",
    "tfixup",
    "subln",
    "ngpt",
)
PLACEMENT_COLORS: dict[str, tuple[float, float, float]] = {p: _PALETTE[i] for i, p in enumerate(_PLACEMENT_ORDER)}
PLACEMENT_MARKERS: dict[str, str] = {p: _MARKERS[i % len(_MARKERS)] for i, p in enumerate(_PLACEMENT_ORDER)}
_FORM_LINESTYLES = ("-", "--", ":", "-.")


def _placement_of(df: pd.DataFrame, hue: str) -> dict[Any, str]:
    """The placement each hue value stands for: itself for hue="placement"; for hue="variant" (a
    placement in one form of its method) the most frequent placement among its rows outside an
    encoder stack (an encoder-decoder is named by its decoder). Other hues stand for no placement."""
    if hue == "placement":
        return {h: h for h in pd.unique(df[hue].dropna())}
    if hue != "variant" or "placement" not in df.columns:
        return {}
    rows = df[df["stack"] != "encoder"] if "stack" in df.columns else df
    rows = rows if not rows.empty else df
    return {h: g.mode().iloc[0] for h, g in rows.groupby(hue, sort=False)["placement"]}


def styles(df: pd.DataFrame, hue: str) -> dict[Any, dict[str, Any]]:
    """Color, marker and line style per hue value: the placement's own color and marker, one line
    style per form of the same placement (in order of first appearance); other values, and hue values
    that all stand for one placement (norms of one placement), get colors in order of first appearance
    in ``df``."""
    order = list(pd.unique(df[hue].dropna()))
    placement = _placement_of(df, hue)
    if len(order) > 1 and len(set(placement.values())) <= 1:  # e.g. norms of one placement: tell them apart
        placement = {}
    others = [h for h in order if placement.get(h) not in PLACEMENT_COLORS]
    if len(others) <= 8:  # Dark2: a palette apart from the placements' tab20, so no value looks like one
        colors = list(plt.get_cmap("Dark2").colors)
    else:
        colors = list(plt.get_cmap("turbo")(np.linspace(0.05, 0.95, len(others))))
    styles, forms = {}, {}
    for h in order:
        p = placement.get(h)
        if p in PLACEMENT_COLORS:
            k = forms[p] = forms.get(p, -1) + 1
            styles[h] = {
                "color": PLACEMENT_COLORS[p],
                "marker": PLACEMENT_MARKERS[p],
                "linestyle": _FORM_LINESTYLES[k % len(_FORM_LINESTYLES)],
            }
        else:
            i = others.index(h)
            styles[h] = {
                "color": colors[i],
                "marker": _MARKERS[i % len(_MARKERS)],
                "linestyle": "-" if i < 10 else "--",
            }
    return styles
