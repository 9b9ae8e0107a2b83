"""Training-time reproductions: the calibrated task, the runs the papers share, their claims and figures.

Every training claim reads runs of one task, trained with analysis.train (probes inside the compiled
step, divergence recorded as a result): a decoder-only LM on a fixed random first-order Markov chain.

The task, the quick sizes and the thresholds were set from calibration runs: docs/calibration.md
("Training: how the task and the quick sizes were chosen").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.execution import ExecutionPlan, default_plan
from analysis.experiments.claims import Feature
from analysis.train import OptimConfig, TaskConfig, TrainConfig, TrainResult, train
from analysis.train.config import to_dict
from models import ModelConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CALIBRATED = (
    "ours: set from the calibration runs of docs/calibration.md (seeds 0-1, quick sizes: {}) "
    "with at least 2.5x margin, before the checks' runs (quick preset: seeds 2-4); unchanged since"
)
DEEP_PROBES = ("act_grad_norm", "act_norm", "cos_adjacent")  # b/t gradient ratio, stream norms, collapse
RATIO = ("act_grad_ratio", "resid_pre bottom/top")  # derived per probe step: g_0 / g_{L-1}


@dataclass(frozen=True)
class Plan:
    """Sizes of the training runs (one per preset).

    Attributes:
        d_model, heads, d_ff: the Transformer's widths; vocab: Markov symbols = model vocabulary.
        seq_len, batch_size: tokens per sequence and sequences per update.
        markov_sharpness: transition rows softmax(sharpness·N(0,1)) (larger = lower entropy rate).
        steps, seeds: constant-lr AdamW updates; `seeds` seeds from `first_seed` on, vmapped together.
        first_seed: the first model seed. The quick preset starts after the calibration's seeds
            (0 and 1), so its checks are evaluated on runs that did not set their thresholds.
        lr: the constant learning rate (no warm-up) of the deep runs and of Xu's norm comparison.
        warmup_lr, warmup_steps: Xiong's warm-up study (shallow models): the peak lr, and the linear
            warm-up to it of the warm-up arm (constant afterwards).
        deep: depth where Post-LN fails (18, the papers' deep setting).
        shallow: depth of Xiong's warm-up study and Xu's norm comparison, where every variant can train.
        probe_every, eval_every, eval_batches: probe and validation cadence.
        unroll_layers: the execution plan's `unroll_layers` (None: this backend's default,
            analysis.execution). The quick and tiny runs are short, so compiling dominates them and they
            scan the layers (0); the paper preset's long runs keep the default (docs/calibration.md says
            why, and what it changes).
    """

    d_model: int
    heads: int
    d_ff: int
    vocab: int
    seq_len: int
    batch_size: int
    markov_sharpness: float
    steps: int
    seeds: int
    lr: float
    warmup_lr: float
    warmup_steps: int
    first_seed: int = 0
    deep: int = 18
    shallow: int = 6
    probe_every: int = 20
    eval_every: int = 10
    eval_batches: int = 2
    unroll_layers: int | None = None

    def execution(self) -> ExecutionPlan:
        """How the runs compute (analysis.execution)."""
        plan = default_plan()
        return plan if self.unroll_layers is None else plan.replace(unroll_layers=self.unroll_layers)

    def model(self, placement: str, layers: int, **fields: Any) -> ModelConfig:
        return ModelConfig(
            arch="decoder",
            placement=placement,
            layers=layers,
            d_model=self.d_model,
            heads=self.heads,
            d_ff=self.d_ff,
            vocab=self.vocab,
            max_len=self.seq_len,
            **fields,
        )


PLANS = {
    "tiny": Plan(
        d_model=32,
        heads=4,
        d_ff=128,
        vocab=32,
        seq_len=16,
        batch_size=8,
        markov_sharpness=3.0,
        steps=40,
        seeds=2,
        lr=3e-4,
        warmup_lr=2e-3,
        warmup_steps=20,
        deep=6,
        shallow=2,
        probe_every=20,
        eval_every=20,
        unroll_layers=0,
    ),
    "quick": Plan(
        d_model=64,
        heads=4,
        d_ff=256,
        vocab=32,
        seq_len=32,
        batch_size=8,
        markov_sharpness=3.0,
        steps=120,
        seeds=3,
        first_seed=2,
        lr=3e-4,
        warmup_lr=2e-3,
        warmup_steps=40,
        unroll_layers=0,
    ),
    # The papers' widths (transformer_wmt_en_de), a 256-symbol chain, 32x128 tokens; Xiong's IWSLT
    # setting for the warm-up study (lr 1e-3, 4000 warm-up updates).
    "paper": Plan(
        d_model=512,
        heads=8,
        d_ff=2048,
        vocab=256,
        seq_len=128,
        batch_size=32,
        markov_sharpness=2.0,
        steps=8000,
        seeds=4,
        lr=5e-4,
        warmup_lr=1e-3,
        warmup_steps=4000,
        probe_every=500,
        eval_every=250,
        eval_batches=8,
    ),
}


@dataclass(frozen=True)
class TrainJob:
    """Train one model configuration on the plan's Markov task over seeds (analysis.train.train)."""

    variant: str
    model: ModelConfig
    plan: Plan
    lr: float
    warmup_steps: int = 0
    columns: tuple[tuple[str, Any], ...] = ()

    kind = "train"
    version = 1  # of `to_rows` (the derived rows stored with the run): bump when it changes

    def config(self) -> TrainConfig:
        p = self.plan
        return TrainConfig(
            model=self.model,
            task=TaskConfig(
                name="markov", seq_len=p.seq_len, batch_size=p.batch_size, markov_sharpness=p.markov_sharpness
            ),
            optim=OptimConfig(lr=self.lr, schedule="constant", warmup_steps=self.warmup_steps),
            steps=p.steps,
            seeds=tuple(range(p.first_seed, p.first_seed + p.seeds)),
            probe_every=p.probe_every,
            probes=DEEP_PROBES,
            eval_every=p.eval_every,
            eval_batches=p.eval_batches,
        )

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.version, "config": to_dict(self.config())}

    def compute(self) -> pd.DataFrame:
        cfg = self.config()
        return to_rows(train(cfg, plan=self.plan.execution()), cfg)


def to_rows(result: TrainResult, cfg: TrainConfig) -> pd.DataFrame:
    """A TrainResult as tidy rows (analysis.probe.tidy's columns plus `phase`).

    - probe rows as recorded (`step` filled in), and per probe step the derived g_bottom/g_top
      (quantity "act_grad_ratio": ‖∂ℒ/∂x_0‖ / ‖∂ℒ/∂x_{L-1}‖ at the layers' inputs);
    - curve rows (loss, lr, grad_norm, update_ratio, val_loss) with stack "model", layer -1;
    - per seed at the last step, "final_val_loss" (the last validation loss) and "mean_val_loss" (the
      mean of its validation losses after step 0: the area under the curve, how fast it trained);
      both +inf for a seed that diverged (it did not train: a diverged run is a result, counted
      against its variant).
    `phase` is "init" at step 0, "final" at the last step, "" between.
    """
    model, steps = cfg.model, cfg.steps
    base = {
        "arch": model.arch,
        "placement": model.placement,
        "norm": model.norm,
        "layers": model.n_dec_layers,
        "d_model": model.d_model,
        "run": result.run_id,
    }
    probes = result.probes.copy()
    g = probes[(probes["quantity"] == "act_grad_norm") & (probes["site"] == "resid_pre") & (probes["layer"] >= 0)]
    piv = g.pivot_table(index=["seed", "step"], columns="layer", values="value", dropna=False)
    ratio = (
        pd.DataFrame(
            {
                "seed": piv.index.get_level_values(0),
                "step": piv.index.get_level_values(1),
                "value": (piv[0] / piv[piv.columns.max()]).to_numpy(),
            }
        )
        if not piv.empty
        else pd.DataFrame()
    )
    curves = result.curves
    rows = [probes]
    if not ratio.empty:
        rows.append(ratio.assign(stack="decoder", layer=-1, site=RATIO[1], quantity=RATIO[0], other_layer=-1, **base))
    rows.append(
        curves.assign(
            stack="model",
            layer=-1,
            site=curves["quantity"],
            other_layer=-1,
            **{k: v for k, v in base.items() if k != "run"},
        )
    )
    val = curves[curves["quantity"] == "val_loss"]
    summary = []
    for seed in cfg.seeds:
        mine = val[(val["seed"] == seed) & (val["step"] > 0)]
        last = mine[mine["step"] == steps]["value"]
        diverged = result.status[seed] == "diverged"
        final = np.inf if diverged else (float(last.iloc[0]) if len(last) else np.nan)
        mean = np.inf if diverged else (float(mine["value"].mean()) if len(mine) else np.nan)
        summary += [
            {"seed": seed, "quantity": "final_val_loss", "value": final},
            {"seed": seed, "quantity": "mean_val_loss", "value": mean},
        ]
    rows.append(
        pd.DataFrame(summary).assign(step=steps, stack="model", layer=-1, site="val_loss", other_layer=-1, **base)
    )
    frame = pd.concat(rows, ignore_index=True)
    frame["phase"] = np.where(frame["step"] == 0, "init", np.where(frame["step"] == steps, "final", ""))
    return frame


# ------------------------------------------------------------------------------------------------
# The runs (shared by hash: Takase's Post-LN run is Xiong's no-warm-up arm and Xie's baseline)
# ------------------------------------------------------------------------------------------------
def deep_job(p: Plan, placement: str, variant: str | None = None, warmup: int = 0, **fields: Any) -> TrainJob:
    return TrainJob(variant or placement, p.model(placement, p.deep, **fields), p, p.lr, warmup)


def deep_jobs(p: Plan, placements: tuple[str, ...]) -> list[TrainJob]:
    """Deep decoder-only runs, constant lr without warm-up, one per placement."""
    return [deep_job(p, pl) for pl in placements]


WARMUP_VARIANTS = ("post, no warm-up", "post, warm-up", "pre, no warm-up")


def warmup_jobs(p: Plan) -> list[TrainJob]:
    """Xiong's study: shallow Post-LN with and without warm-up, Pre-LN without, at the peak warmup_lr."""
    job = lambda pl, variant, warmup: TrainJob(variant, p.model(pl, p.shallow), p, p.warmup_lr, warmup)
    return [
        job("post", WARMUP_VARIANTS[0], 0),
        job("post", WARMUP_VARIANTS[1], p.warmup_steps),
        job("pre", WARMUP_VARIANTS[2], 0),
    ]


XU_NORMS = ("layernorm", "layernorm_simple", "detachnorm", "detach_mean", "detach_var", "adanorm")


def xu_jobs(p: Plan) -> list[TrainJob]:
    """Xu et al.: every Pre-LN norm slot (and the final norm) holds the variant (the paper's setting)."""
    return [TrainJob(norm, p.model("pre", p.shallow, norm=norm), p, p.lr) for norm in XU_NORMS]


def rskip_jobs(p: Plan) -> list[TrainJob]:
    """Liu et al.: rSkip+LN (λ = 2) against Post-LN at the deep setting."""
    return [deep_job(p, "post"), deep_job(p, "rsln", "rsln (λ=2)", rsln_steps=2)]


# ------------------------------------------------------------------------------------------------
# Features of training frames
# ------------------------------------------------------------------------------------------------
def final_loss(part: str, variant: str, name: str | None = None, *, quantity: str = "final_val_loss") -> Feature:
    """Per seed: the last validation loss, or with quantity="mean_val_loss" the mean of the validation
    curve after step 0 (+inf for a diverged seed)."""
    return Feature(name or f"{variant}:{quantity}", {"part": part, "variant": variant, "quantity": quantity})


def final_ratio(part: str, variant: str, name: str | None = None) -> Feature:
    """Per seed: g_bottom/g_top after the last update (missing for a diverged seed)."""
    return Feature(name or f"{variant}:b/t", {"part": part, "variant": variant, "quantity": RATIO[0], "phase": "final"})


def final_probe(part: str, variant: str, probe: tuple[str, str], layer: int | str, name: str) -> Feature:
    """Per seed: a probe of the decoder stack after the last update."""
    quantity, site = probe
    return Feature(
        name,
        {"part": part, "variant": variant, "stack": "decoder", "quantity": quantity, "site": site, "phase": "final"},
        layer=layer,
    )


# ------------------------------------------------------------------------------------------------
# Figures (called from the experiments' figures(); matplotlib only there)
# ------------------------------------------------------------------------------------------------
def curve_figure(frame: pd.DataFrame, title: str, *, ratio_panel: bool = True) -> Figure:
    """Validation loss (and g_bottom/g_top) against update step, one line per variant."""
    from analysis.plot import figures as F  # lazy: matplotlib only to draw, so `lnscope --help` starts fast

    fig, axes = F.figure_grid(2 if ratio_panel else 1, ncols=2, panel_size=(5.2, 3.8))
    F.plot_lines(
        frame,
        axes[0],
        x="step",
        where={"quantity": "val_loss", "stack": "model"},
        logy=False,
        xlabel="update step",
        ylabel="validation loss (nats/token)",
        title="validation loss",
    )
    if ratio_panel:
        F.plot_lines(
            frame,
            axes[1],
            x="step",
            where={"quantity": RATIO[0]},
            logy=True,
            band="logci",
            xlabel="update step",
            ylabel="‖∂ℒ/∂x_0‖ / ‖∂ℒ/∂x_top‖",
            title="bottom/top gradient ratio (probed in the step)",
        )
    fig.suptitle(title)
    return fig
