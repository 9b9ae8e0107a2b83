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
# way (`analysis/experiments/`, catalogue in `docs/claims.md`); this notebook writes three of its own
# in a claims file, on its own probe outputs and its own training runs.
# Write the claim and its threshold *before* looking at the numbers.

# %% tags=["parameters"]
import os

SCALE = os.environ.get("LNSCOPE_NOTEBOOK_SCALE", "full")  # the test suite runs it at "small"
LAYERS, SEEDS, STEPS = {"full": (18, 8, 200), "small": (2, 2, 6)}[SCALE]

# %%
import tempfile
from pathlib import Path

import pandas as pd

from analysis import CHEAP_PROBES, probe_at_init
from analysis.experiments import EXPERIMENTS
from analysis.experiments.atlas import harness_config
from analysis.experiments.claims import check
from analysis.experiments.claimsfile import ClaimsFileError, claim_frames, load_claims, plot_checks
from analysis.io import write_run
from analysis.train import run_sweep

# lnscope's own store is analysis.options.default_store() ($LNSCOPE_STORE, else ./lnscope-store);
# this notebook keeps its probe outputs, runs and claims file in a folder of its own
WORK = Path(tempfile.mkdtemp(prefix="lnscope-notebook-06-"))

# %% [markdown]
# ## The claims, written first
#
# A claims file (TOML) holds the same parts as the built-in claims; the format is in
# `docs/experiments.md` ("Claims files"), and `docs/examples/my_claims.toml` has one claim on a
# built-in experiment's frame (`experiment = "takase2022"`) and one on a sweep. Ours reads our own data:
#
# 1. Xiong et al.'s caveat, as we read it: in a Pre-LN decoder at initialization the *bottom* layer's
#    FFN weights get a larger gradient than the top layer's, `G_top/G_bottom ≤ 1` (on probe outputs).
# 2. "Post-LN's gradients vanish toward the bottom" said of a decoder-only model:
#    `G_top/G_bottom ≥ 50`. The calibration (`docs/calibration.md`) says this is a property of the
#    decoder *with cross-attention*, so we expect it not to reproduce here (on probe outputs).
# 3. In our own small sweep, Pre-LN ends at a lower validation loss than Post-LN (on training runs).

# %%
G = 'quantity = "param_grad_norm", site = "mlp.w2.weight", stack = "decoder"'
CLAIMS = f"""
[papers]
mine2026 = "A. User 2026, notebook 06"

[[claim]]
id = "mine2026.pre_bottom_heavier"
source = "notebook 06"
statement = "Pre-LN decoder at init: the top layer's FFN-weight gradient is at most the bottom layer's"
method_form = "Pre-LN, decoder-only, harness at init"
probes = ["{WORK}/probes/decoder-pre.parquet"]
statistic = "ratio"
description = "G_top/G_bottom, Pre-LN"
threshold = 1.0
direction = "<="
threshold_note = "written before looking"
features = [
  {{ name = "G_top", where = {{ {G} }}, layer = -1 }},
  {{ name = "G_bottom", where = {{ {G} }}, layer = 0 }},
]

[[claim]]
id = "mine2026.post_decoder_only_vanishes"
source = "notebook 06"
statement = "Post-LN decoder-only at init: FFN-weight gradients vanish toward the bottom (ratio >= 50)"
method_form = "Post-LN, decoder-only (no cross-attention), harness at init"
probes = ["{WORK}/probes/decoder-post.parquet"]
statistic = "ratio"
description = "G_top/G_bottom, Post-LN"
threshold = 50.0
direction = ">="
threshold_note = "the encoder-decoder claim's threshold, applied without cross-attention"
features = [
  {{ name = "G_top", where = {{ {G} }}, layer = -1 }},
  {{ name = "G_bottom", where = {{ {G} }}, layer = 0 }},
]

[[claim]]
id = "mine2026.pre_trains_lower"
source = "notebook 06's sweep"
statement = "Pre-LN ends at a lower validation loss than Post-LN (same lr, no warm-up)"
runs = "{{store}}/runs"
statistic = "difference"
description = "final validation loss, Post-LN minus Pre-LN"
threshold = 0.0
direction = ">="
threshold_note = "the sign only, written before looking"
features = [
  {{ name = "post", where = {{ quantity = "final_val_loss", placement = "post" }} }},
  {{ name = "pre", where = {{ quantity = "final_val_loss", placement = "pre" }} }},
]
"""
claims_file = WORK / "my_claims.toml"
claims_file.write_text(CLAIMS)

# %% [markdown]
# ## The data, then the checks
#
# Probe outputs as `lnscope probe --out` writes them (here `probe_at_init` on the harness, every
# seed in one compiled call), and a two-run sweep as `lnscope sweep` writes it.

# %%
for placement in ("post", "pre"):
    frame = probe_at_init(
        harness_config("decoder", placement, LAYERS),
        seeds=range(SEEDS),
        batch_size=8,
        seq_len=32,
        probes=CHEAP_PROBES,
        run=f"decoder-{placement}",
    )
    write_run(frame, {"placement": placement, "layers": LAYERS}, WORK / "probes" / f"decoder-{placement}.parquet")

model = {"arch": "decoder", "layers": min(LAYERS, 6), "d_model": 16 if SCALE == "small" else 64}
model.update({"heads": 2, "d_ff": 4 * model["d_model"], "vocab": 32, "max_len": 32})
sweep = {
    "base": {
        "steps": STEPS,
        "seeds": SEEDS,
        "probe_every": STEPS // 2,
        "eval_every": STEPS // 2,
        "eval_batches": 2,
        "model": model,
        "task": {"name": "markov", "seq_len": 16, "batch_size": 8},
        "optim": {"lr": 1e-3},
    },
    "grid": {"model.placement": ["post", "pre"]},
}
run_sweep(sweep, WORK / "runs", progress=False)[["run_id", "model.placement", "diverged_seeds", "final_val_loss"]]

# %% [markdown]
# A claims file with mistakes is refused before anything is computed, each problem on its own line
# naming the claim, the field and the valid choices:

# %%
typos = CLAIMS.replace('statistic = "ratio"', 'statistic = "ratoi"', 1)
typos = typos.replace('direction = "<="', 'direction = "=<"', 1)
(WORK / "typos.toml").write_text(typos)
try:
    load_claims(WORK / "typos.toml", store=WORK)
except ClaimsFileError as err:
    print("\n".join(problem.split(": ", 1)[1] for problem in err.problems))

# %% [markdown]
# `lnscope check --claims my_claims.toml --store WORK` prints the same table as the built-in checks;
# in Python, `load_claims` then `claim_frames` (the frames the claims read: an experiment's runs once,
# probe files and training runs read) and `check`:

# %%
claims = load_claims(claims_file, store=WORK)
frames = claim_frames(claims)
results = [check(claim, frames[claim.experiment]) for claim in claims]
table = pd.DataFrame([r.to_json() for r in results])
table[["id", "statistic", "ci_low", "ci_high", "threshold", "direction", "verdict", "n_seeds", "note"]]

# %% [markdown]
# Each statistic with its 95% interval over seeds, against its threshold (the shaded side is the
# claim's; `plot_check(result, ax)` draws one):

# %%
fig = plot_checks(results)

# %% [markdown]
# With few seeds the interval is wide and a verdict can be *inconclusive*: add seeds rather than move
# the threshold. A claim that does not reproduce is a finding; report it with its statistic.
#
# ## The registered claims
#
# Every experiment carries the claims its tidy table can check. `EXPERIMENTS[name].run("quick")`
# computes that table (reusing stored results), and `lnscope check` or `make report` check them all;
# `lnscope report --runs WORK/runs` draws your runs' curves and profiles.

# %%
pd.DataFrame(
    [(c.id, c.statement, c.threshold_text(), c.when) for e in EXPERIMENTS.values() for c in e.claims],
    columns=["claim", "statement", "threshold", "when"],
)
