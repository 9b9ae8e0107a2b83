# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Training dynamics: deep Post-LN and learning-rate warm-up
#
# At initialization (notebooks 02, 03) the placements differ in how gradients are distributed over
# layers. This notebook trains them. Two questions from the seed papers:
#
# - Takase et al.: does a deep Post-LN model fail to train where Pre-LN and B2T train, and what
#   happens to its lower layers' gradients while it fails?
# - Xiong et al.: does Post-LN need a learning-rate warm-up, and does Pre-LN train without one?
#
# The task is a fixed random first-order Markov chain over the vocabulary (`TaskConfig(name="markov")`):
# a language-modelling task that is learnable within a few hundred steps, with a known loss floor.
# Probes run inside the compiled training step, from the same forward and backward pass as the update
# (`docs/probes.md`); every run is a tidy table of curves and one of probe rows.

# %% tags=["parameters"]
import os

SCALE = os.environ.get("LNSCOPE_NOTEBOOK_SCALE", "full")  # the test suite runs it at "small"
LAYERS, STEPS, SEEDS = {"full": (18, 300, (0, 1)), "small": (2, 4, (0,))}[SCALE]
PLACEMENTS = {"full": ("post", "pre", "b2t", "residual"), "small": ("post", "pre")}[SCALE]
LR, WARMUP = 1e-3, {"full": 100, "small": 2}[SCALE]
PROBE_EVERY = max(1, STEPS // 10)

# %%
import matplotlib.pyplot as plt
import pandas as pd

from analysis.train import OptimConfig, TaskConfig, TrainConfig, train
from models import ModelConfig

TASK = TaskConfig(name="markov", vocab=128, seq_len=64, batch_size=8)


def run(placement: str, warmup: int = 0):
    """Train one placement over SEEDS (vmapped) with AdamW at LR, constant schedule after `warmup`."""
    model = ModelConfig(
        arch="decoder",
        placement=placement,
        layers=LAYERS,
        d_model=64,
        heads=4,
        d_ff=256,
        vocab=TASK.vocab,
        max_len=TASK.seq_len,
    )
    cfg = TrainConfig(
        model=model,
        task=TASK,
        optim=OptimConfig(lr=LR, schedule="constant", warmup_steps=warmup),
        steps=STEPS,
        seeds=SEEDS,
        probe_every=PROBE_EVERY,
        eval_every=PROBE_EVERY,
        probes=("act_grad_norm",),
    )
    return train(cfg)


results = {p: run(p) for p in PLACEMENTS}
{p: r.status for p, r in results.items()}

# %% [markdown]
# ## Loss curves without warm-up, and the lower layers' gradients
#
# Left: the training loss (mean over seeds). Right: `‖∂ℒ/∂x‖` at the bottom layer's input over the
# top layer's, at every probe step: below 1, the bottom layers receive less gradient than the top.


# %%
def bottom_over_top(result) -> pd.DataFrame:
    rows = result.probes[
        (result.probes["quantity"] == "act_grad_norm")
        & (result.probes["site"] == "resid_pre")
        & (result.probes["stack"] == "decoder")
    ]
    top = rows["layers"].iloc[0] - 1
    table = rows.pivot_table(index=["seed", "step"], columns="layer", values="value")
    return (table[0] / table[top]).groupby("step").mean()


fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for placement, result in results.items():
    loss = result.curves[result.curves["quantity"] == "loss"].groupby("step")["value"].mean()
    axes[0].plot(loss.index, loss.to_numpy(), label=placement)
    ratio = bottom_over_top(result)
    axes[1].plot(ratio.index, ratio.to_numpy(), "o-", label=placement)
axes[0].set(xlabel="step", ylabel="training loss (nats)", title=f"{LAYERS}-layer decoder, lr {LR:g}, no warm-up")
axes[1].set(xlabel="step", ylabel="‖∂ℒ/∂x_bottom‖ / ‖∂ℒ/∂x_top‖", yscale="log", title="bottom/top gradient ratio")
for ax in axes:
    ax.legend(title="placement")
    ax.grid(alpha=0.3)
fig.tight_layout()

# %% [markdown]
# ## Warm-up (Xiong et al.)
#
# The same Post-LN model with a linear warm-up of `WARMUP` steps to the same peak learning rate. The
# warm-up and learning rate are runtime arguments of the compiled step, so this reuses the compiled
# program of the run above.

# %%
warm = run("post", warmup=WARMUP)
fig, ax = plt.subplots(figsize=(6.5, 4))
for label, result in (
    ("post, no warm-up", results["post"]),
    (f"post, {WARMUP}-step warm-up", warm),
    ("pre, no warm-up", results["pre"]),
):
    loss = result.curves[result.curves["quantity"] == "loss"].groupby("step")["value"].mean()
    ax.plot(loss.index, loss.to_numpy(), label=label)
ax.set(xlabel="step", ylabel="training loss (nats)", title="learning-rate warm-up")
ax.legend()
ax.grid(alpha=0.3)

# %% [markdown]
# Validation loss at the end of each run (mean over seeds), against the task's loss floor (the
# Markov chain's entropy rate: no model can do better on average).

# %%
final = {
    label: r.curves[r.curves["quantity"] == "val_loss"].groupby("step")["value"].mean().iloc[-1]
    for label, r in {**results, "post + warm-up": warm}.items()
}
print("loss floor:", {k: round(v, 3) for k, v in warm.info["task"].items() if k in ("loss_floor", "entropy_rate")})
pd.Series(final, name="final validation loss (nats)").to_frame()
