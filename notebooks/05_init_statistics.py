# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Initialization statistics over seeds
#
# Every number of the papers' initialization analyses is a random variable: it depends on the draw of
# the weights and of the batch. This notebook probes many seeds at once (`jax.vmap` over seeds, model
# initialization inside one compiled call), looks at the spread of two headline statistics, and at how
# the confidence interval of their mean narrows with the number of seeds.

# %% tags=["parameters"]
import os

SCALE = os.environ.get("LNSCOPE_NOTEBOOK_SCALE", "full")  # the test suite runs it at "small"
LAYERS, SEEDS = {"full": (18, 32), "small": (2, 2)}[SCALE]
PLACEMENTS = ("post", "pre")

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis import CHEAP_PROBES, probe_at_init
from analysis.experiments.atlas import harness_config
from analysis.plot.figures import PLACEMENT_COLORS
from analysis.stats import seed_summary

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
# ## One statistic per seed
#
# - `G_top/G_bottom`: ‖∂ℒ/∂W2‖ of the top layer over the bottom layer's (≫ 1: vanishing toward the
#   bottom; ≪ 1: the bottom layers get the larger gradients).
# - `cos(x_L-1, x_L)`: cosine between the inputs of the last two layers (near 1: collapse).


# %%
def per_seed(quantity: str, site: str, fn) -> pd.DataFrame:
    sel = df[(df["quantity"] == quantity) & (df["site"] == site) & (df["stack"] == "decoder") & (df["layer"] >= 0)]
    rows = []
    for placement, group in sel.groupby("placement"):
        table = group.pivot(index="seed", columns="layer", values="value").to_numpy()
        rows += [dict(placement=placement, seed=s, value=v) for s, v in zip(range(len(table)), fn(table))]
    return pd.DataFrame(rows)


stats = {
    "G_top/G_bottom": per_seed("param_grad_norm", "mlp.w2.weight", lambda v: v[:, -1] / v[:, 0]),
    "cos(x_L-1, x_L)": per_seed("cos_adjacent", "resid_pre", lambda v: v[:, -1]),
}
fig, axes = plt.subplots(1, len(stats), figsize=(10, 3.6))
for ax, (name, values) in zip(axes, stats.items()):
    for i, (placement, group) in enumerate(values.groupby("placement")):
        jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(group))
        ax.plot(i + jitter, group["value"], "o", alpha=0.6, color=PLACEMENT_COLORS[placement], label=placement)
    ax.set_xticks(range(values["placement"].nunique()), sorted(values["placement"].unique()))
    ax.set_ylabel(f"{name} (ratio, no unit)" if "/" in name else f"{name} (cosine)")
    ax.set_title(f"{name}, one point per seed ({SEEDS} seeds)", fontsize=10)
fig.tight_layout()

# %% [markdown]
# ## The mean over seeds, with a 95% Student-t interval
#
# `analysis.stats.seed_summary` gives the mean with a two-sided t interval per group; a seed whose
# value is NaN (a diverged run) makes the mean NaN rather than being dropped.

# %%
pd.concat({name: seed_summary(values, ["placement"]) for name, values in stats.items()}, names=["statistic"])

# %% [markdown]
# How the interval narrows as seeds are added (the first `n` seeds):

# %%
ns = [n for n in (2, 3, 4, 8, 16, 32) if n <= SEEDS]
values = stats["G_top/G_bottom"]
width = pd.DataFrame(
    {
        n: seed_summary(values[values["seed"] < n], ["placement"]).set_index("placement").eval("ci_high - ci_low")
        for n in ns
    }
).T
width.index.name = "seeds"
width.columns.name = "95% CI width of mean G_top/G_bottom"
width
