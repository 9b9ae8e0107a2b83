# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Representation collapse: Xie et al. (ResiDual)
#
# Xie et al. 2023 argue that Pre-LN's residual stream grows with depth (`‖x_l‖² ∝ l`) while each
# layer adds a contribution of fixed size, so the upper layers change the representation less and
# less: adjacent layers become nearly identical ("representation collapse"). Post-LN re-normalizes
# the stream and does not collapse, but its gradients vanish; ResiDual keeps a Post-LN stream and an
# un-normalized dual stream to get both. This notebook measures the stream's growth, the cosine of
# adjacent layers, each layer's relative update, and CKA between all layers against its
# shuffled-token null.

# %% tags=["parameters"]
import os

SCALE = os.environ.get("LNSCOPE_NOTEBOOK_SCALE", "full")  # the test suite runs it at "small"
LAYERS, SEEDS = {"full": (18, 3), "small": (2, 2)}[SCALE]
PLACEMENTS = ("post", "pre", "residual")

# %%
import matplotlib.pyplot as plt
import pandas as pd

from analysis import CHEAP_PROBES, probe_at_init
from analysis.experiments.atlas import harness_config
from analysis.plot.figures import plot_cka_heatmap, plot_layer_profile

df = pd.concat(
    [
        probe_at_init(
            harness_config("decoder", p, LAYERS),
            seeds=range(SEEDS),
            batch_size=8,
            seq_len=32,
            probes=CHEAP_PROBES,
            run=f"decoder/{p}",
        )
        for p in PLACEMENTS
    ],
    ignore_index=True,
)

# %% [markdown]
# ## Stream growth and adjacent-layer similarity
#
# Left: the per-token RMS of each layer's input (Post-LN and ResiDual's `a` stream stay at 1).
# Middle: the cosine between consecutive layers' inputs (near 1: the layer barely changed the
# stream). Right: `‖FF(x)‖/‖x‖`, each FFN's contribution relative to the stream it is added to.

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
plot_layer_profile(df, axes[0], quantity="act_norm", site="resid_pre", stack="decoder")
plot_layer_profile(df, axes[1], quantity="cos_adjacent", site="resid_pre", stack="decoder")
plot_layer_profile(df, axes[2], quantity="update_ratio", site="mlp", stack="decoder")
fig.tight_layout()

# %% [markdown]
# ResiDual's two streams: the `a` stream is Post-LN's forward pass exactly (same parameters, same
# numbers); the dual stream `u` accumulates every branch output un-normalized, like Pre-LN's stream.

# %%
res = df[(df["placement"] == "residual") & (df["quantity"] == "cos_adjacent")]
res.groupby(["site", "layer"])["value"].mean().unstack("layer")

# %% [markdown]
# ## CKA between all layers, and what CKA reads on unrelated tokens
#
# Debiased linear CKA between every pair of layers' outputs (`resid_post`), averaged over seeds. The
# null permutes the tokens of one argument: it keeps each layer's statistics but breaks the
# correspondence, so it is the level that means "unrelated".

# %%
fig, axes = plt.subplots(1, len(PLACEMENTS), figsize=(4.2 * len(PLACEMENTS), 3.4))
for ax, placement in zip(axes, PLACEMENTS):
    plot_cka_heatmap(df, ax, stack="decoder", placement=placement)
    ax.set_title(placement)
fig.tight_layout()

# %%
off_diagonal = df[df["quantity"].isin(["cka", "cka_null"]) & (df["layer"] != df["other_layer"])]
off_diagonal.groupby(["placement", "quantity"])["value"].mean().unstack("quantity")
