# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · A tour of lnscope
#
# Build any layer-normalization placement, look inside it, probe it at initialization and plot what
# the probes measured. Everything comes from `models/` and `analysis/`; the equations behind each
# placement are in `docs/placements.md`, what each probe computes in `docs/probes.md`.

# %% tags=["parameters"]
import os

# "full" is the notebook as meant; the test suite sets LNSCOPE_NOTEBOOK_SCALE=small to run it quickly.
SCALE = os.environ.get("LNSCOPE_NOTEBOOK_SCALE", "full")
LAYERS, SEEDS = {"full": (12, 4), "small": (2, 2)}[SCALE]

# %%
import jax
import matplotlib.pyplot as plt
import pandas as pd
import treescope

from analysis import CHEAP_PROBES, probe_at_init
from analysis.experiments.atlas import harness_config
from analysis.plot.figures import plot_cka_heatmap, plot_layer_profile
from models import NORMS, PLACEMENTS, build_model

treescope.basic_interactive_setup(autovisualize_arrays=True)

# %% [markdown]
# ## The zoo
#
# Every placement is a registry entry: a few-line wiring function per sublayer plus stack-level
# properties (final norm, a second stream, depth-dependent constants). Any placement works with any
# norm and any architecture.

# %%
pd.DataFrame(
    [(name, p.family, p.final_norm, p.reference) for name, p in PLACEMENTS.items()],
    columns=["placement", "family", "final norm", "reference"],
)

# %%
print("norms:", ", ".join(NORMS))

# %% [markdown]
# ## Build one and look inside
#
# `harness_config` is the small model of the papers' initialization analyses (d_model 64, 4 heads,
# FFN 256, vocabulary 128, Xavier-uniform projections, no positional encoding). treescope renders the
# Flax NNX module: every parameter with its shape, the per-layer parameters stacked on a leading
# layer axis (the stack is scanned).

# %%
cfg = harness_config("decoder", "pre", LAYERS)
model = build_model(cfg, seed=0)
model

# %% [markdown]
# The forward pass returns the logits and every named probe site (the residual stream between
# sublayers, each sublayer's output, each norm's input and output), per stack.

# %%
tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, cfg.vocab)
out = model.forward(tokens)
jax.tree.map(lambda a: a.shape, out.sites)

# %% [markdown]
# ## Probe it
#
# `probe_at_init` builds one model per seed inside the compiled program and returns a tidy table: one
# row per (seed, stack, layer, site, quantity). How the seeds are computed follows the backend's
# `analysis.execution.default_plan()`: on a CPU a program step per seed, spread over the cores; on a
# GPU or TPU all seeds `jax.vmap`ped in one program. The numbers are the same either way.

# %%
df = probe_at_init(cfg, seeds=range(SEEDS), batch_size=8, seq_len=32, probes=CHEAP_PROBES, run="tour")
print(len(df), "rows;", ", ".join(sorted(df["quantity"].unique())))
df.head()

# %% [markdown]
# The same numbers as arrays, seeds × layers, rendered by treescope:


# %%
def per_layer(quantity: str, site: str):
    sel = df[(df["quantity"] == quantity) & (df["site"] == site) & (df["layer"] >= 0) & (df["stack"] == "decoder")]
    return sel.pivot(index="seed", columns="layer", values="value").to_numpy()


{
    "‖∂ℒ/∂x_l‖ (act_grad_norm, resid_pre)": per_layer("act_grad_norm", "resid_pre"),
    "‖∂ℒ/∂W2_l‖ (param_grad_norm, mlp.w2.weight)": per_layer("param_grad_norm", "mlp.w2.weight"),
    "RMS of x_l (act_norm, resid_pre)": per_layer("act_norm", "resid_pre"),
}

# %% [markdown]
# ## Plot it
#
# Figures take the tidy frame, an `Axes` and what to draw (`quantity`, `site`, `stack`; a CKA heatmap a
# `stack` and a `placement`): the line is the seed mean (geometric on a log axis), the band its 95%
# t interval. Try another placement (`"post"`, `"b2t"`, `"residual"`, …), norm (`norm="rmsnorm"`) or
# architecture (`"encdec"`).

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
plot_layer_profile(df, axes[0], quantity="act_grad_norm", site="resid_pre", stack="decoder")
plot_cka_heatmap(df, axes[1], stack="decoder", placement="pre")
fig.tight_layout()
