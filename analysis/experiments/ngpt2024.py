"""Loshchilov et al. 2024 (nGPT): the normalized Transformer trains faster than Pre-LN on the same budget.

    lnscope check --paper ngpt2024 --preset quick --figures reports/experiments

Decoder-only Pre-LN and nGPT (`ngpt`: every vector on the unit sphere, h ← Norm(h + |α|⊙(Norm(S(h)) − h)),
weights renormalized after every update) language models trained on the same task for the same number of
updates, each arm at its own learning rate: the one of a small grid with the lowest final validation loss
on calibration seeds (`tune`), as the paper tunes both. nGPT without weight decay (the paper's), Pre-LN
with AdamW's decay 0.1 (nanoGPT's, whose code the paper's builds on); constant learning rate, no warm-up,
for both. The statistic is the paper's headline read on one budget: the fraction of the budget nGPT
needs to reach the validation loss Pre-LN ends it with (its seed-mean curve, linearly interpolated
between evaluations; +inf when it never does), with a bootstrap interval over held-out seeds.

The paper trains 0.5B and 1B models on OpenWebText for up to 500k updates and reads a 4-20x speed-up
(longer contexts gain more); ours are 2-layer models on a character corpus for 200 updates. The
learning rates were chosen on calibration seeds 100-103 (`tune`; both arms' best rates lie inside their
grids), before the held-out seeds were trained. There the calibration did not separate the arms in the
paper's direction: Pre-LN reached nGPT's final loss in half the budget, and nGPT never reached
Pre-LN's (a 4-layer exploration on seeds 100-101 read the same), so the thresholds are the paper's
own statements, marked "not calibrated". nGPT's α_init is the paper's 0.05; an exploration at 0.25
(seeds 100-101, lr 1e-2 and 3e-3) ended no lower (2.42 and 2.61 nats/char).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.execution import default_plan
from analysis.experiments.claims import Claim, Feature, Statistic, custom
from analysis.experiments.experiment import Experiment
from analysis.experiments.runs import run_jobs
from analysis.train import OptimConfig, TaskConfig, TrainConfig, TrainResult, train
from analysis.train.config import to_dict
from models import ModelConfig

NAME = "ngpt2024"
PART = "curves"
ARMS = ("pre", "ngpt")
ARM_NAMES = {"pre": "Pre-LN", "ngpt": "nGPT"}  # how figures and legends name each arm
# nGPT has no weight decay (the paper's: its weights live on the sphere); the GPT baseline keeps AdamW's
# decoupled decay 0.1, nanoGPT's default (the paper's code is a nanoGPT reimplementation).
WEIGHT_DECAY = {"pre": 0.1, "ngpt": 0.0}
VAL = "val_loss"


@dataclass(frozen=True)
class Preset:
    """Sizes of the two arms' runs (one per preset).

    Attributes:
        layers, d_model, heads, d_ff: the decoder-only Transformer's sizes (both arms).
        task: an LM task of analysis.train.tasks (decoder layout: next-token loss on every position).
        vocab: the model's vocabulary (>= the task's symbols).
        seq_len, batch_size: tokens per window and windows per update.
        steps: updates per run: the budget both arms get.
        eval_every: validation loss every this many updates (a divisor of `steps`: the statistic reads
            the curve at evenly spaced evaluations from step 0 to `steps`).
        eval_batches: validation batches per evaluation (fixed across steps and seeds).
        seeds: the seeds the checks read (held out from the calibration's).
        lr: each arm's learning rate, chosen on the calibration seeds from `lr_grid` (`tune`).
        lr_grid: each arm's candidate learning rates.
        unroll_layers: the execution plan's `unroll_layers` (None: the backend's default); the quick runs
            are short, compiling dominates them, so they scan the layers (0).
    """

    layers: int
    d_model: int
    heads: int
    d_ff: int
    task: str
    vocab: int
    seq_len: int
    batch_size: int
    steps: int
    eval_every: int
    eval_batches: int
    seeds: tuple[int, ...]
    lr: Mapping[str, float]
    lr_grid: Mapping[str, tuple[float, ...]]
    unroll_layers: int | None = 0

    def __post_init__(self) -> None:
        if self.eval_every < 1 or self.steps % self.eval_every:
            raise ValueError(f"eval_every={self.eval_every} must be a positive divisor of steps={self.steps}")
        for name, table in (("lr", self.lr), ("lr_grid", self.lr_grid)):
            if sorted(table) != sorted(ARMS):
                raise ValueError(f"{name} must name each arm of {ARMS} once, got {list(table)}")

    def model(self, arm: str) -> ModelConfig:
        return ModelConfig(
            arch="decoder",
            placement=arm,
            layers=self.layers,
            d_model=self.d_model,
            heads=self.heads,
            d_ff=self.d_ff,
            vocab=self.vocab,
            max_len=self.seq_len,
        )

    def config(self, arm: str, lr: float, seeds: tuple[int, ...]) -> TrainConfig:
        """The run of `arm` at learning rate `lr` over `seeds`: no probes, only the loss curves."""
        if arm not in ARMS:
            raise ValueError(f"unknown arm {arm!r}; valid: {', '.join(ARMS)}")
        return TrainConfig(
            model=self.model(arm),
            task=TaskConfig(name=self.task, seq_len=self.seq_len, batch_size=self.batch_size),
            optim=OptimConfig(lr=lr, schedule="constant", weight_decay=WEIGHT_DECAY[arm]),
            steps=self.steps,
            seeds=tuple(seeds),
            probe_every=0,
            probes=(),
            eval_every=self.eval_every,
            eval_batches=self.eval_batches,
        )


@dataclass(frozen=True)
class CurveJob:
    """Train one arm over its seeds and keep the loss curves (analysis.train.train)."""

    variant: str
    run: TrainConfig
    unroll_layers: int | None = 0
    columns: tuple[tuple[str, Any], ...] = ()

    kind = "train"
    version = 1  # of `curve_rows`: bump when it changes

    def config(self) -> TrainConfig:
        """The run (every "train" job names its TrainConfig so)."""
        return self.run

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rows": "ngpt2024.curve_rows",
            "version": self.version,
            "unroll_layers": self.unroll_layers,
            "config": to_dict(self.run),
        }

    def compute(self) -> pd.DataFrame:
        plan = default_plan()
        plan = plan if self.unroll_layers is None else plan.replace(unroll_layers=self.unroll_layers)
        return curve_rows(train(self.run, plan=plan), self.run)


def curve_rows(result: TrainResult, cfg: TrainConfig) -> pd.DataFrame:
    """The run's loss curves as tidy rows (stack "model", layer -1, site = quantity): training loss and
    validation loss per seed and step. A diverged seed's validation loss is +inf at every evaluation from
    its divergence step on (it did not train: counted against its arm), so every seed has every evaluation."""
    model = cfg.model
    curves = result.curves[result.curves["quantity"].isin(("loss", VAL))][["seed", "step", "quantity", "value"]]
    evaluations = sorted(set(range(0, cfg.steps + 1, cfg.eval_every)) | {cfg.steps})
    for seed, step in result.diverged_step.items():
        if result.status[seed] != "diverged":
            continue
        at = cfg.steps if step is None else step
        kept = curves[~((curves["seed"] == seed) & (curves["quantity"] == VAL) & (curves["step"] >= at))]
        lost = pd.DataFrame(
            {"seed": seed, "step": [s for s in evaluations if s >= at], "quantity": VAL, "value": np.inf}
        )
        curves = pd.concat([kept, lost], ignore_index=True)
    return curves.assign(
        stack="model",
        layer=-1,
        other_layer=-1,
        site=curves["quantity"],
        arch=model.arch,
        placement=model.placement,
        norm=model.norm,
        layers=model.n_dec_layers,
        d_model=model.d_model,
        lr=cfg.optim.lr,
    ).reset_index(drop=True)


def jobs_at(p: Preset, lrs: Mapping[str, float], seeds: tuple[int, ...]) -> list[CurveJob]:
    """One CurveJob per arm at its learning rate in `lrs`, over `seeds`."""
    return [CurveJob(arm, p.config(arm, lrs[arm], seeds), p.unroll_layers) for arm in ARMS]


def plan(p: Preset) -> dict:
    return {PART: jobs_at(p, p.lr, p.seeds)}


# ------------------------------------------------------------------------------------------------
# Calibration: the learning-rate grid on calibration seeds, then the statistic at the chosen rates
# ------------------------------------------------------------------------------------------------
CALIBRATION_SEEDS = (100, 101, 102, 103)


def tune(preset: str = "quick", seeds: tuple[int, ...] = CALIBRATION_SEEDS, store: Any = None) -> pd.DataFrame:
    """Every arm at every learning rate of its grid on `seeds`: one row per (arm, lr) with the seed-mean
    final validation loss and `best` marking each arm's lowest (the rates a preset's `lr` records).

    Columns: variant, lr, final_val_loss (seed mean; +inf when a seed diverged), best.
    """
    p = EXPERIMENT.preset(preset)
    rows = []
    for arm, grid in p.lr_grid.items():
        for lr in grid:
            frame = run_jobs([CurveJob(arm, p.config(arm, lr, seeds), p.unroll_layers)], store, desc=f"{NAME}/tune")
            final = frame[(frame["quantity"] == VAL) & (frame["step"] == p.steps)]["value"].to_numpy(float)
            rows.append({"variant": arm, "lr": lr, "final_val_loss": float(np.mean(final))})
    table = pd.DataFrame(rows)
    best = table.groupby("variant")["final_val_loss"].transform("min")
    return table.assign(best=table["final_val_loss"] == best)


def calibration_frame(
    preset: str = "quick", seeds: tuple[int, ...] = CALIBRATION_SEEDS, store: Any = None
) -> pd.DataFrame:
    """The `curves` part of `preset` with both arms at the preset's learning rates on the calibration
    `seeds` (the runs `tune` made there): `check(claim, calibration_frame())` gives the calibration numbers
    the claims' threshold notes quote."""
    p = EXPERIMENT.preset(preset)
    return run_jobs(jobs_at(p, p.lr, seeds), store, desc=f"{NAME}/{PART}").assign(part=PART)


# ------------------------------------------------------------------------------------------------
# The statistic
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurveFeature(Feature):
    """Per seed: a whole curve, one column per step (ascending); `where` filters by equality, and must leave
    one row per (seed, step). The claims' statistics are then independent of a preset's budget and cadence."""

    def values(self, frame: pd.DataFrame) -> pd.DataFrame:
        flat = dataclasses.replace(self, layer=None)
        rows = frame
        for col, want in self.where.items():
            if col not in rows.columns:
                return Feature.values(flat, frame)  # its error names the column
            rows = rows[rows[col] == want]
        if rows.empty:
            return Feature.values(flat, frame)  # its error names the filter that emptied the selection
        if rows.duplicated(["seed", "step"]).any():
            raise ValueError(f"feature {self.name!r}: several rows per seed and step; narrow `where`")
        return rows.pivot(index="seed", columns="step", values="value").sort_index(axis=1)


def budget_fraction(curves: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Where a loss curve first falls to `target`, as a fraction of the budget.

    Args:
        curves: (..., n) losses at n >= 2 evenly spaced evaluations, step 0 first and the budget last.
        target: (...) the loss to reach.

    Returns:
        (...) s*/T, s* the first step at which the curve is <= target (linear interpolation between the
        evaluation before and the one at the crossing; 0 when it starts there), T the budget; +inf when
        the curve never reaches it.
    """
    curves, target = np.asarray(curves, float), np.asarray(target, float)[..., None]
    n = curves.shape[-1]
    below = curves <= target
    first = np.argmax(below, axis=-1)
    reached = below.any(axis=-1)
    before = np.take_along_axis(curves, np.maximum(first - 1, 0)[..., None], -1)
    at = np.take_along_axis(curves, first[..., None], -1)
    with np.errstate(all="ignore"):
        part = np.where(np.isfinite(before), (before - target) / (before - at), 1.0)[..., 0]
    index = np.where(first == 0, 0.0, first - 1 + np.clip(part, 0.0, 1.0))
    return np.where(reached, index / (n - 1), np.inf)


def _curve(arm: str) -> CurveFeature:
    return CurveFeature(f"{arm}:val", {"part": PART, "variant": arm, "quantity": VAL, "stack": "model"}, layer=None)


def steps_to_match() -> Statistic:
    """The fraction of the budget nGPT's seed-mean validation curve needs to reach the validation loss
    Pre-LN's seed-mean curve ends the budget with."""
    ngpt, pre = _curve("ngpt"), _curve("pre")
    return custom(
        "budget_fraction",
        "steps nGPT needs to reach Pre-LN's final validation loss, over the budget (seed-mean curves, linear "
        "interpolation between evaluations; +inf if never)",
        (ngpt, pre),
        lambda m: budget_fraction(m[ngpt.name], m[pre.name][..., -1]),
    )


def final_gap() -> Statistic:
    """nGPT's seed-mean final validation loss minus Pre-LN's."""
    ngpt, pre = _curve("ngpt"), _curve("pre")
    return custom(
        "difference",
        "final validation loss (nats/char), nGPT minus Pre-LN (seed means)",
        (ngpt, pre),
        lambda m: m[ngpt.name][..., -1] - m[pre.name][..., -1],
    )


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def figures(frame: pd.DataFrame) -> dict:
    from analysis.plot import figures as F  # lazy: matplotlib only to draw, so `lnscope --help` starts fast
    from analysis.plot.styles import styles

    d = frame[(frame["part"] == PART) & (frame["quantity"] == VAL)]
    if d.empty:
        return {}
    fig, axes = F.figure_grid(1, ncols=1, panel_size=(6.0, 4.0))
    ax = axes[0]
    style = styles(d, "variant")
    for arm in [a for a in ARMS if a in set(d["variant"])]:
        mine = d[d["variant"] == arm]
        curves = mine.pivot(index="step", columns="seed", values="value").sort_index()
        color = style[arm]["color"]
        for seed in curves.columns:
            ax.plot(curves.index, curves[seed], color=color, lw=0.6, alpha=0.45)
        lr = float(mine["lr"].iloc[0])
        label = f"{ARM_NAMES[arm]}, lr {lr:g} (median of {curves.shape[1]} seeds)"
        ax.plot(curves.index, curves.median(axis=1), color=color, lw=2.0, label=label)
    pre = d[(d["variant"] == "pre") & (d["step"] == d["step"].max())]["value"]
    if len(pre):
        ax.axhline(float(pre.mean()), color="0.3", lw=0.8, ls="--", label="Pre-LN's final loss (seed mean)")
    finite = d["value"][np.isfinite(d["value"])]
    if len(finite):  # the first evaluations, far above the rest, would flatten the part the claims read
        low, high = float(finite.min()), float(finite.quantile(0.9))
        ax.set_ylim(low - 0.1 * (high - low), high if high > low else low + 1.0)
    ax.set_xlabel("update step (same budget for both)")
    ax.set_ylabel("validation loss (nats/character)")
    ax.set_title("thin lines = seeds, thick = median (the first evaluations lie above the frame)", fontsize="medium")
    ax.legend(loc="upper right", fontsize="small", frameon=False)
    layers, width = int(d["layers"].max()), int(d["d_model"].max())
    fig.suptitle(f"Loshchilov et al.: nGPT vs Pre-LN, {layers}-layer decoder, d={width}, each at its tuned lr")
    return {"ngpt2024_curves": fig}


# ------------------------------------------------------------------------------------------------
# Presets, claims, the experiment
# ------------------------------------------------------------------------------------------------
PRESETS = {
    # the test suite's end-to-end run: the quick learning rates, one small layer, a few updates
    "tiny": Preset(
        layers=1, d_model=16, heads=2, d_ff=64, task="charlm", vocab=128, seq_len=8, batch_size=2, steps=10,
        eval_every=5, eval_batches=1, seeds=(0, 1),
        lr={"pre": 3e-3, "ngpt": 1e-2}, lr_grid={"pre": (3e-3,), "ngpt": (1e-2,)},
    ),
    # the 2-core CPU: a character LM on the standard library's pydoc topics, 200 updates of 8x32 tokens
    "quick": Preset(
        layers=2, d_model=64, heads=4, d_ff=256, task="charlm", vocab=128, seq_len=32, batch_size=8, steps=200,
        eval_every=10, eval_batches=4, seeds=(0, 1, 2, 3),
        lr={"pre": 3e-3, "ngpt": 1e-2}, lr_grid={"pre": (1e-3, 3e-3, 1e-2), "ngpt": (3e-3, 1e-2, 3e-2)},
    ),
    # a GPU: GPT-2-small widths, 12 layers, 256-token windows. Its learning rates are NOT tuned: they are
    # the quick preset's scaled by sqrt(64/768); run tune("paper") and set them before reading a verdict.
    "paper": Preset(
        layers=12, d_model=768, heads=12, d_ff=3072, task="charlm", vocab=128, seq_len=256, batch_size=32,
        steps=5000, eval_every=250, eval_batches=8, seeds=(0, 1, 2, 3),
        lr={"pre": 9e-4, "ngpt": 3e-3}, lr_grid={"pre": (3e-4, 9e-4, 3e-3), "ngpt": (1e-3, 3e-3, 9e-3)},
        unroll_layers=None,
    ),
}  # fmt: skip

HELD_OUT = PRESETS["quick"].seeds
PAPER_SETTING = (
    "0.5B and 1B decoder-only LMs on OpenWebText, contexts 1k-8k, each arm at its tuned lr, up to 500k "
    "updates: nGPT reaches GPT's validation loss in 4-20x fewer updates"
)
OUR_SETTING = (
    "2-layer decoder-only character LMs, d=64, pydoc topics, 200 updates of 8x32 tokens, each arm at its "
    "best lr of a 3-point grid on calibration seeds 100-103; held-out seeds 0-3"
)
FORM = (
    "Pre-LN (AdamW, weight decay 0.1) vs nGPT (unit-norm weights renormalized after every update, α_init "
    "0.05, no weight decay); constant lr, no warm-up; the same task and number of updates"
)
SOURCE = "Loshchilov et al. 2024, nGPT, Fig. 1 and Sec. 4.1 (training acceleration at equal validation loss)"


def claims() -> tuple[Claim, ...]:
    return (
        Claim(
            f"{NAME}.faster_to_pre_final_loss",
            NAME,
            SOURCE,
            "nGPT reaches the validation loss Pre-LN ends the budget with in at most a quarter of the budget "
            "(the paper's smallest speed-up, 4x).",
            FORM,
            NAME,
            steps_to_match(),
            0.25,
            "<=",
            "the paper's smallest speed-up (4x: a quarter of the budget), not calibrated: the calibration run "
            "(seeds 100-103, each arm at its best lr of the grid) measured +inf [inf, inf], nGPT's seed-mean curve "
            "never reached Pre-LN's final loss 2.29 within the 200 updates (it ended at 2.41), while Pre-LN reached "
            "nGPT's final loss at 0.50 of the budget",
            needs=(PART,),
            when="training",
            paper_setting=PAPER_SETTING,
            our_setting=OUR_SETTING,
        ),
        Claim(
            f"{NAME}.lower_loss_same_budget",
            NAME,
            SOURCE,
            "At the end of the same budget nGPT's validation loss is at most Pre-LN's (final loss, nGPT minus "
            "Pre-LN, <= 0).",
            FORM,
            NAME,
            final_gap(),
            0.0,
            "<=",
            "the paper's direction (nGPT not worse at equal budget), not calibrated: the calibration run (seeds "
            "100-103, each arm at its best lr of the grid) measured +0.12 [0.083, 0.16] nats/char, nGPT worse",
            needs=(PART,),
            when="training",
            paper_setting=PAPER_SETTING,
            our_setting=OUR_SETTING,
        ),
    )


CLAIMS = claims()

EXPERIMENT = Experiment(
    name=NAME,
    paper="Loshchilov, Hsieh, Sun, Ginsburg 2024, 'nGPT: Normalized Transformer with Representation Learning on "
    "the Hypersphere', arXiv 2410.01131",
    title="nGPT reaches Pre-LN's validation loss in fewer updates on the same task and budget",
    summary=__doc__.split("\n\n", 2)[2],
    command="lnscope check --paper ngpt2024",
    presets=PRESETS,
    plan=plan,
    figures=figures,
    claims=CLAIMS,
)
