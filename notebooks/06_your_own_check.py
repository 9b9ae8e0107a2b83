# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Writing your own hypothesis check
#
# A claim is data: which rows of a tidy table it reads (*features*, one value per seed), a named
# statistic of their seed means, a threshold and a direction. `check` computes the statistic, a 95%
# percentile-bootstrap interval over seeds, and a verdict: **reproduced** when the whole interval lies
# on the claim's side of the threshold, **not reproduced** when it lies on the other side,
# **inconclusive** when it straddles it. The registered claims of the seed papers are built the same
# way (`analysis/experiments/`, catalogue in `docs/claims.md`); this notebook writes two of its own.
# Write the claim and its threshold *before* looking at the numbers.

# %% tags=["parameters"]
import os

SCALE = os.environ.get("LNSCOPE_NOTEBOOK_SCALE", "full")  # the test suite runs it at "small"
LAYERS, SEEDS = {"full": (18, 8), "small": (2, 2)}[SCALE]

# %%
import dataclasses

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import NullFormatter

from analysis import CHEAP_PROBES, probe_at_init
from analysis.experiments import EXPERIMENTS
from analysis.experiments.atlas import harness_config
from analysis.experiments.claims import Claim, Feature, check, ratio

# %% [markdown]
# ## The claims, written first
#
# 1. Xiong et al.'s caveat, as we read it: in a Pre-LN decoder at initialization the *bottom* layer's
#    FFN weights get a larger gradient than the top layer's, `G_top/G_bottom ≤ 1`.
# 2. "Post-LN's gradients vanish toward the bottom" said of a decoder-only model:
#    `G_top/G_bottom ≥ 50`. The calibration (`docs/calibration.md`) says this is a property of the
#    decoder *with cross-attention*, so we expect it not to reproduce here.


# %%
def g(placement: str, layer: int) -> Feature:
    """‖∂ℒ/∂W2‖ of one decoder layer (0 = bottom, -1 = top), one value per seed."""
    where = {"placement": placement, "quantity": "param_grad_norm", "site": "mlp.w2.weight", "stack": "decoder"}
    return Feature(f"G_{placement}_{'top' if layer < 0 else 'bottom'}", where, layer=layer)


claims = [
    Claim(
        id="xiong2020.notebook_pre_bottom_heavier",
        paper="xiong2020",
        source="notebook 06",
        statement="Pre-LN decoder at init: the top layer's FFN-weight gradient is at most the bottom layer's",
        method_form="Pre-LN, decoder-only, harness at init",
        experiment="xiong2020",
        statistic=ratio(g("pre", -1), g("pre", 0), "G_top/G_bottom, Pre-LN"),
        threshold=1.0,
        direction="<=",
        threshold_note="written before looking",
    ),
    Claim(
        id="takase2022.notebook_post_decoder_only_vanishes",
        paper="takase2022",
        source="notebook 06",
        statement="Post-LN decoder-only at init: FFN-weight gradients vanish toward the bottom (ratio >= 50)",
        method_form="Post-LN, decoder-only (no cross-attention), harness at init",
        experiment="takase2022",
        statistic=ratio(g("post", -1), g("post", 0), "G_top/G_bottom, Post-LN"),
        threshold=50.0,
        direction=">=",
        threshold_note="the encoder-decoder claim's threshold, applied without cross-attention",
    ),
]

# %% [markdown]
# ## The data, then the checks
#
# Any tidy table works: here `probe_at_init` on the harness, every seed in one compiled call.

# %%
frame = pd.concat(
    [
        probe_at_init(
            harness_config("decoder", p, LAYERS),
            seeds=range(SEEDS),
            batch_size=8,
            seq_len=32,
            probes=CHEAP_PROBES,
            run=f"decoder/{p}",
        )
        for p in ("post", "pre")
    ],
    ignore_index=True,
)
results = pd.DataFrame([dataclasses.asdict(check(claim, frame)) for claim in claims])
results[["id", "statistic", "ci_low", "ci_high", "threshold", "direction", "verdict", "n_seeds", "note"]]

# %% [markdown]
# Each statistic with its interval, against its threshold (the shaded side is the claim's):

# %%
fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 2.6))
for ax, (_, row) in zip(axes, results.iterrows()):
    ax.errorbar(
        [row["statistic"]],
        [0],
        xerr=[[row["statistic"] - row["ci_low"]], [row["ci_high"] - row["statistic"]]],
        fmt="o",
        capsize=4,
        color="k",
        label="statistic, 95% bootstrap CI",
    )
    ax.axvline(row["threshold"], color="tab:red", label=f"threshold ({row['direction']})")
    low = min(row["ci_low"], row["threshold"]) / 4
    high = max(row["ci_high"], row["threshold"]) * 4
    ax.axvspan(
        *((row["threshold"], high) if row["direction"] == ">=" else (low, row["threshold"])),
        color="tab:green",
        alpha=0.12,
        label="the claim's side",
    )
    ax.set(
        xscale="log",
        xlim=(low, high),
        yticks=[],
        xlabel="G_top / G_bottom (log scale)",
        title=f"{row['id'].split('.')[1]}: {row['verdict']}",
    )
    ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only: the minor ones overlap
    ax.legend(fontsize=7, loc="upper left")
fig.tight_layout()

# %% [markdown]
# With few seeds the interval is wide and a verdict can be *inconclusive*: add seeds rather than move
# the threshold. A claim that does not reproduce is a finding; report it with its statistic.
#
# ## The registered claims
#
# Every experiment carries the claims its tidy table can check. `EXPERIMENTS[name].run("quick")`
# computes that table (reusing stored results), and `lnscope check` or `make report` check them all.

# %%
pd.DataFrame(
    [(c.id, c.statement, c.threshold_text(), c.when) for e in EXPERIMENTS.values() for c in e.claims],
    columns=["claim", "statement", "threshold", "when"],
)
