"""A user's tiny study for the claims-file and runs-report tests: a two-config sweep (the store tests'
tiny training run at two learning rates), a tiny registered experiment of one real probe job, and a
claims file with one claim on each."""

from __future__ import annotations

from pathlib import Path

from analysis.experiments.experiment import Experiment
from analysis.experiments.runs import InitJob
from analysis.train.sweep import Sweep, run_sweep
from models import ModelConfig
from tests.analysis.train.configs import TINY, tiny_run

LRS = (1e-3, 1e-2)
EXPERIMENT = "tiny2026"


def tiny_sweep(out: Path) -> Path:
    """Train the two-config sweep into `out` (a store's runs/ folder) and return `out`."""
    run_sweep(Sweep(tiny_run(), (("optim.lr", LRS),)), out, progress=False)
    return out


def tiny_experiment() -> Experiment:
    """A registrable experiment: one decoder probed at init over two seeds (one compiled program)."""
    job = InitJob(
        variant="post",
        model=ModelConfig(arch="decoder", placement="post", **TINY),
        seeds=2,
        batch_size=2,
        seq_len=8,
        probes=("act_grad_norm",),
    )
    return Experiment(
        name=EXPERIMENT,
        paper="a test's own",
        title="a tiny probe",
        summary="One tiny Post-LN decoder at init.",
        command="",
        presets={"tiny": None, "quick": None, "paper": None},
        plan=lambda preset: {"init": [job]},
        figures=lambda frame: {},
        claims=(),
    )


CLAIMS_FILE = f"""
[papers]
mine2026 = "A. User 2026, my own hypotheses (a lab notebook)"

[[claim]]
id = "mine2026.post_bottom_gets_more"
source = "my notebook"
statement = "At init, a Post-LN decoder's bottom layer gets a gradient at least 0.01 of its top one's"
method_form = "a 2-layer d=16 decoder"
experiment = "{EXPERIMENT}"
statistic = "ratio"
threshold = 0.01
direction = ">="
threshold_note = "set loose before looking"
features = [
  {{ name = "bottom", where = {{ variant = "post", quantity = "act_grad_norm", site = "resid_pre" }}, layer = 0 }},
  {{ name = "top", where = {{ variant = "post", quantity = "act_grad_norm", site = "resid_pre" }}, layer = -1 }},
]

[[claim]]
id = "mine2026.faster_lr_lower_loss"
source = "my sweep"
statement = "lr 1e-2 ends at a lower validation loss than lr 1e-3"
runs = "{{store}}/runs"
statistic = "difference"
threshold = 0.0
direction = ">="
threshold_note = "the sign only"
features = [
  {{ name = "slow", where = {{ quantity = "final_val_loss", "optim.lr" = {LRS[0]} }} }},
  {{ name = "fast", where = {{ quantity = "final_val_loss", "optim.lr" = {LRS[1]} }} }},
]
"""
