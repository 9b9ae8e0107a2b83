# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Vanishing gradients: Takase et al. (B2T) and Xiong et al.
#
# Takase et al. 2022 show that in a deep Post-LN encoder-decoder the gradients of the decoder's lower
# layers vanish, that the LayerNorms are where the signal shrinks, and that a bottom-to-top (B2T)
# connection that skips them fixes it. Xiong et al. 2020 show that the last layer's gradient is
# independent of depth for Post-LN but shrinks like `1/sqrt(L)` for Pre-LN. This notebook measures all
# of it at initialization. Background: `docs/placements.md` (B2T's paper and code forms) and
# `docs/probes.md` (the LN Jacobian gain).

# %% tags=["parameters"]
import os

SCALE = os.environ.get("LNSCOPE_NOTEBOOK_SCALE", "full")  # the test suite runs it at "small"
LAYERS, SEEDS = {"full": (18, 3), "small": (2, 2)}[SCALE]
DEPTHS = {"full": (3, 6, 12, 18, 24), "small": (2,)}[SCALE]
ENCDEC_PLACEMENTS = {"full": ("post", "pre", "b2t", "residual"), "small": ("post", "b2t")}[SCALE]

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis import CHEAP_PROBES, probe_at_init
from analysis.experiments.atlas import harness_config
from analysis.plot.figures import plot_depth_scaling, plot_layer_profile


def probe(arch: str, placement: str, layers: int) -> pd.DataFrame:
    """The harness model of one placement at initialization, SEEDS seeds, every cheap probe."""
    return probe_at_init(
        harness_config(arch, placement, layers),
        seeds=range(SEEDS),
        batch_size=8,
        seq_len=32,
        probes=CHEAP_PROBES,
        run=f"{arch}/{placement}/{layers}",
    )


# %% [markdown]
# ## 1. The decoder of a deep encoder-decoder
#
# `G_l = ‖∂ℒ/∂W2_l‖` (the FFN output matrix of layer `l`) and `g_l = ‖∂ℒ/∂x_l‖` (the gradient at the
# layer's input) per decoder layer. Post-LN's fall by orders of magnitude toward the bottom; Pre-LN's
# grow toward the bottom; B2T's stay within a few-fold.

# %%
encdec = pd.concat([probe("encdec", p, LAYERS) for p in ENCDEC_PLACEMENTS], ignore_index=True)
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
plot_layer_profile(encdec, axes[0], quantity="param_grad_norm", site="mlp.w2.weight", stack="decoder")
plot_layer_profile(encdec, axes[1], quantity="act_grad_norm", site="resid_pre", stack="decoder")
fig.tight_layout()


# %%
def top_over_bottom(df: pd.DataFrame, quantity: str, site: str, stack: str = "decoder") -> pd.Series:
    """Per placement: the seed mean at the top layer over the seed mean at the bottom layer."""
    sel = df[(df["quantity"] == quantity) & (df["site"] == site) & (df["stack"] == stack) & (df["layer"] >= 0)]
    means = sel.groupby(["placement", "layer"])["value"].mean().unstack("layer")
    return means.iloc[:, -1] / means.iloc[:, 0]


top_over_bottom(encdec, "param_grad_norm", "mlp.w2.weight").rename("G_top / G_bottom").to_frame()

# %% [markdown]
# ## 2. Where the signal shrinks: the LayerNorms
#
# Each LN's backward pass is `1/σ` of its input times a projection, so its gain
# `‖J_LNᵀ g‖/‖g‖` is at most about `1/σ`. In Post-LN the input of every LN is `h + S(h)`, with
# `σ > 1`. The cross-attention's LN shrinks the most: its branch does not depend on the decoder stream
# through the value path, so nothing in the branch compensates.

# %%
post = encdec[(encdec["placement"] == "post") & (encdec["stack"] == "decoder")]
gains = post[post["quantity"].isin(["ln_jacobian_gain", "ln_gain_estimate"]) & (post["layer"] >= 0)]
table = gains.groupby(["site", "quantity"])["value"].mean().unstack("quantity")
table.index.name = "Post-LN decoder norm (mean over layers and seeds)"
table

# %% [markdown]
# ## 3. The control: no cross-attention, no vanishing
#
# The same depth as a decoder-only model. At Xavier initialization Post-LN's gradients no longer
# vanish: the phenomenon belongs to the decoder with cross-attention.

# %%
decoder = pd.concat([probe("decoder", p, d) for p in ("post", "pre") for d in DEPTHS], ignore_index=True)
top_over_bottom(decoder[decoder["layers"] == max(DEPTHS)], "param_grad_norm", "mlp.w2.weight").rename(
    "G_top / G_bottom, decoder-only"
).to_frame()

# %% [markdown]
# ## 4. Xiong et al.: the last layer's gradient against depth
#
# Theory: `‖∂ℒ/∂W2_L‖` is `O(d·sqrt(ln d))` for Post-LN, independent of `L`, and
# `O(d·sqrt(ln d / L))` for Pre-LN: a log-log slope of −1/2.

# %%
fig, ax = plt.subplots(figsize=(6, 4))
plot_depth_scaling(decoder, ax, quantity="param_grad_norm", site="mlp.w2.weight", stack="decoder")
last = decoder[
    (decoder["quantity"] == "param_grad_norm")
    & (decoder["site"] == "mlp.w2.weight")
    & (decoder["layer"] == decoder["layers"] - 1)
]
means = last.groupby(["placement", "layers"])["value"].mean()
if len(DEPTHS) > 1:
    slopes = {p: np.polyfit(np.log(means[p].index), np.log(means[p].to_numpy()), 1)[0] for p in ("post", "pre")}
    print("log-log slope of G_L against L:", {p: round(s, 3) for p, s in slopes.items()})
means.unstack("layers")
