"""Dey et al. 2025 (CompleteP): the coordinate check across depth, CompleteP (α = 1) against Pre-LN.

    lnscope check --paper dey2025 --preset quick --figures reports/experiments

The depth sweep of the coordinate check (analysis/experiments/coordcheck.py: the same jobs, shared by
hash): decoder-only Pre-LN (standard parametrization) and CompleteP (`completep`: every sublayer
h ← h + L^−1·S(LN(h)), with its per-group AdamW learning-rate and ε rules) stacks of 2, 4, 8 and 16
layers at d_model 64 (quick), trained for 10 constant-lr AdamW steps (lr 1e-2) on the Markov task,
3 seeds. The claims read RMS(Δh) = RMS(h_10(x) − h_0(x)) of the stream after the top layer on a fixed
batch x: how much 10 steps moved the model's last hidden state. CompleteP's promise is that this
update is Θ(1) in depth (flat lines against L on a log-log plot); under standard parametrization
every block adds a Θ(1) update, so it grows with L.

Part `lr`, the paper's second claim (its learning-rate transfer across depth): a learning-rate
sweep (analysis/experiments/lr_transfer.py) of Pre-LN (standard parametrization) and CompleteP
(α = 1, L_base = 2) at 2, 4 and 8 layers, d_model 32 (quick), a log2-spaced grid η = 2^−9 .. 2^−4,
120 constant-lr AdamW steps on the Markov task, 4 seeds; per run the training loss of the last 24
steps. The best log2 learning rate k* of each depth is the vertex of the parabola through the
seed-mean loss minimum; the claim reads how far k* moves from L = 2 to L = 8 under each
parametrization: CompleteP's should move less than standard parametrization's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.experiments import coordcheck, lr_transfer
from analysis.experiments.claims import Calibration, Claim, Feature, Statistic, custom, depth_slope
from analysis.experiments.common import feature
from analysis.experiments.experiment import Experiment
from analysis.experiments.runs import run_jobs

NAME = "dey2025"
DEPTHS = (2, 4, 8, 16)  # the quick coordinate check's depths; the claims fit over them
STEP = 10  # the quick coordinate check's last step: the update after 10 AdamW steps
PLACEMENTS = ("pre", "completep")
DELTA = ("coord_delta_rms", "resid_post")  # RMS(h_t − h_0) of the stream after each layer


def _settings(base: coordcheck.CoordSettings, **changes) -> coordcheck.CoordSettings:
    """The depth sweep only, of `base` with `changes`, for Pre-LN and CompleteP."""
    return dataclasses.replace(base, widths=(), placements=PLACEMENTS, **changes)


@dataclass(frozen=True)
class Dey2025Settings:
    """One preset: the coordinate check's depth sweep (part `depth`) and the learning-rate sweep
    across depth (part `lr`)."""

    coord: coordcheck.CoordSettings
    lr: lr_transfer.LRSweepSettings


LR_DEPTHS = (2, 4, 8)  # the quick learning-rate sweep's depths; L_base = the first
LR_GRID = (-9, -8, -7, -6, -5, -4)  # log2 η of the quick sweep: 2^-9 .. 2^-4
LR_PART = "lr"


def _lr_settings(**changes) -> lr_transfer.LRSweepSettings:
    quick = dict(
        depths=LR_DEPTHS,
        base_depth=LR_DEPTHS[0],
        log2_lrs=LR_GRID,
        width=32,
        head_dim=8,
        ff_mult=4,
        vocab=32,
        seq_len=16,
        batch_size=16,
        markov_sharpness=3.0,
        steps=120,
        smooth=24,
        seeds=4,
        placements=PLACEMENTS,
    )
    return lr_transfer.LRSweepSettings(**{**quick, **changes})


PRESETS = {
    # the claims' depths, step and learning-rate grid at the test suite's widths
    "tiny": Dey2025Settings(
        _settings(coordcheck.PRESETS["tiny"], depths=DEPTHS, steps=STEP),
        _lr_settings(width=16, ff_mult=2, seq_len=8, batch_size=2, steps=6, smooth=2, seeds=3),
    ),
    # the coordinate check's own quick depth sweep (its jobs, by hash)
    "quick": Dey2025Settings(_settings(coordcheck.PRESETS["quick"]), _lr_settings()),
    "paper": Dey2025Settings(
        _settings(coordcheck.PRESETS["paper"], depths=(*DEPTHS, 32, 64)),
        _lr_settings(
            depths=(2, 4, 8, 16, 32),
            log2_lrs=tuple(range(-12, -3)),
            width=256,
            head_dim=64,
            vocab=256,
            seq_len=128,
            markov_sharpness=2.0,
            steps=2000,
            smooth=200,
        ),
    ),
}


def plan(s: Dey2025Settings) -> dict:
    return {"depth": coordcheck._plan(s.coord)["depth"], LR_PART: lr_transfer.plan_jobs(s.lr)}


def calibration_frame(
    first_seed: int = 100, preset: str = "quick", store: Any = None, part: str = "depth"
) -> pd.DataFrame:
    """Part `part` ("depth" or "lr") of `preset` with every run moved to seeds first_seed ..
    first_seed + seeds - 1 (calibration.calibrate reads initialization parts only; this is its
    counterpart for training runs): `check(claim, calibration_frame(part=...))` reproduces a claim's
    calibration record."""
    s = EXPERIMENT.preset(preset)
    jobs = plan(s).get(part)
    if jobs is None:
        raise ValueError(f"{NAME} has no part {part!r}; valid: depth, {LR_PART}")
    count = s.coord.seeds if part == "depth" else s.lr.seeds
    seeds = tuple(range(first_seed, first_seed + count))
    jobs = [dataclasses.replace(j, config=dataclasses.replace(j.config, seeds=seeds)) for j in jobs]
    return run_jobs(jobs, store, desc=f"{NAME}/{part}").assign(part=part)


def _top_update(placement: str, depth: int) -> Feature:
    return feature(f"{placement}@{depth}", "depth", placement, DELTA, layer=-1, layers=depth, step=STEP)


def update_slope(placement: str) -> Statistic:
    return depth_slope(
        {d: _top_update(placement, d) for d in DEPTHS},
        f"log-log least-squares slope of RMS(Δh) after the top layer at step {STEP} against depth L "
        f"({placement}, seed means)",
    )


def abs_update_slope(placement: str) -> Statistic:
    base = update_slope(placement)
    return custom(
        "depth_slope",
        f"|log-log slope| of RMS(Δh) after the top layer at step {STEP} against depth L ({placement}, seed means)",
        base.features,
        lambda m: np.abs(base.combine(m)),
    )


HELD_OUT = tuple(range(coordcheck.PRESETS["quick"].seeds))  # the quick coordinate check's seeds
CALIBRATION_SEEDS = (100, 101, 102)
PAPER_SETTING = "the paper's coordinate checks of GPT-style LMs across depth (its µP-style depth figure), trained"
OUR_SETTING = f"decoder-only, L = 2-16, d=64, {STEP} AdamW steps at lr 1e-2 on the Markov task, 3 seeds"
NOTE = (
    "set from a calibration run of the same jobs on seeds 100-102 (record below; rerun: "
    "check(claim, dey2025.calibration_frame())) before the check read the "
    "held-out seeds; an exploratory run on the held-out seeds preceded it (it chose the statistic)"
)


def claims() -> tuple[Claim, ...]:
    src = "Dey et al. 2025, CompleteP (α = 1): the coordinate check across depth"
    form = f"{{}}, decoder-only, {STEP} AdamW steps (CompleteP's per-group lr and ε rules); the update RMS(Δh)"
    return (
        Claim(
            f"{NAME}.completep_update_flat_in_depth",
            NAME,
            src,
            "Under CompleteP the update of the last hidden state is flat across depth: |log-log slope| of "
            f"RMS(Δh) after the top layer at step {STEP} against L is at most 0.18.",
            form.format("CompleteP (α = 1, L_base = 1)"),
            NAME,
            abs_update_slope("completep"),
            0.18,
            "<=",
            NOTE,
            needs=("depth",),
            when="training",
            paper_setting=PAPER_SETTING,
            our_setting=OUR_SETTING,
            calibration=Calibration(
                seeds=CALIBRATION_SEEDS,
                held_out_seeds=HELD_OUT,
                preset="quick",
                value=0.0602,
                interval=(0.0537, 0.0717),
                rule="multiple",
                margin=3,
                held_out_result="reproduced: 0.055 [0.045, 0.066], checked after the threshold was committed",
            ),
        ),
        Claim(
            f"{NAME}.pre_update_grows_with_depth",
            NAME,
            src,
            "Under standard parametrization (Pre-LN) the update of the last hidden state grows with depth: "
            f"log-log slope of RMS(Δh) after the top layer at step {STEP} against L is at least 0.79.",
            form.format("Pre-LN, standard parametrization"),
            NAME,
            update_slope("pre"),
            0.79,
            ">=",
            NOTE,
            needs=("depth",),
            when="training",
            paper_setting=PAPER_SETTING,
            our_setting=OUR_SETTING,
            calibration=Calibration(
                seeds=CALIBRATION_SEEDS,
                held_out_seeds=HELD_OUT,
                preset="quick",
                value=1.5737,
                interval=(1.5331, 1.6355),
                rule="fraction",
                margin=2,
                held_out_result="reproduced: 1.54 [1.44, 1.66], checked after the threshold was committed",
            ),
        ),
    )


def lr_shift_gap(s: lr_transfer.LRSweepSettings | None = None) -> Statistic:
    """|shift of the best log2 lr from the shallowest to the deepest depth| under Pre-LN minus that under
    CompleteP, at the depths and grid of `s` (default: the quick preset's, which the claim reads)."""
    s = PRESETS["quick"].lr if s is None else s
    return lr_transfer.shift_gap(LR_PART, "pre", "completep", s.depths, s.log2_lrs)


LR_PAPER_SETTING = (
    "the paper's learning-rate sweeps of GPT-style LMs at several depths (SP, µP, depth-µP and CompleteP; "
    "its transfer figures), trained to a token budget"
)
LR_OUR_SETTING = (
    f"decoder-only, L = {', '.join(map(str, LR_DEPTHS))}, d=32, η = 2^{LR_GRID[0]} .. 2^{LR_GRID[-1]}, "
    f"{PRESETS['quick'].lr.steps} constant-lr AdamW steps on the Markov task, {PRESETS['quick'].lr.seeds} seeds"
)

# The rule, fixed before the calibration run: threshold = v / 2 (rule "fraction", m = 2) of the
# calibration value v when v > 0; if v <= 0 (no transfer advantage at our scale) the claim keeps the
# a-priori effect size of half an octave (half the grid step: a smaller gap is within the parabola's
# interpolation) and no calibration record, and the held-out check reports what it finds.
LR_THRESHOLD = 0.5
LR_NOTE = (
    "not calibrated by a margin rule: the calibration run on seeds 100-103 (rerun: check(claim, "
    "dey2025.calibration_frame(part='lr'))) measured v = -0.074 [-0.30, 0.07] (shifts: Pre-LN -0.27, CompleteP "
    "-0.34 octave), not > 0, so by the rule fixed before that run the threshold is the a-priori effect size of "
    "half an octave (half the grid step); committed before the check read the held-out seeds 0-3; an exploratory "
    "run on seeds 200-202 (150 steps, a 9-point grid) chose the grid and the run length. Held-out seeds 0-3: not "
    "reproduced, -0.006 [-0.25, 0.21] (shifts: Pre-LN -0.28, CompleteP -0.28 octave)"
)


def lr_claim() -> Claim:
    return Claim(
        f"{NAME}.completep_best_lr_moves_less",
        NAME,
        "Dey et al. 2025, CompleteP (α = 1): learning-rate transfer across depth",
        "Under CompleteP the best learning rate moves less across depth than under standard parametrization: "
        f"|shift of the best log2 lr from L = {LR_DEPTHS[0]} to L = {LR_DEPTHS[-1]}| under Pre-LN minus that "
        f"under CompleteP is at least {LR_THRESHOLD:g} octave.",
        f"CompleteP (α = 1, L_base = {LR_DEPTHS[0]}) against Pre-LN (standard parametrization), decoder-only, "
        "constant-lr AdamW (CompleteP's per-group lr and ε rules); the smoothed final training loss",
        NAME,
        lr_shift_gap(),
        LR_THRESHOLD,
        ">=",
        LR_NOTE,
        needs=(LR_PART,),
        when="training",
        paper_setting=LR_PAPER_SETTING,
        our_setting=LR_OUR_SETTING,
        calibration=None,  # the rule above kept the a-priori threshold: the note records the calibration
    )


CLAIMS = (*claims(), lr_claim())


def figures(frame: pd.DataFrame) -> dict:
    from analysis.plot import figures as F  # lazy: matplotlib only to draw, so `lnscope --help` starts fast

    out = {}
    lr = frame[frame["part"] == LR_PART] if "part" in frame else frame.iloc[:0]
    if not lr.empty:
        out["dey2025_lr_transfer"] = lr_transfer.lr_sweep_figure(
            lr,
            "Dey et al.: final training loss against learning rate per depth, standard parametrization "
            "(Pre-LN) vs CompleteP (α = 1)",
        )
    d = frame[(frame["part"] == "depth") & (frame["quantity"] == DELTA[0]) & (frame["site"] == DELTA[1])]
    d = d[(d["layer"] == d["layers"] - 1) & (d["stack"] == "decoder")]
    if d.empty:
        return out
    last = int(d["step"].max())
    fig, axes = F.figure_grid(1, ncols=1, panel_size=(5.2, 3.8))
    F.plot_lines(
        d[d["step"] == min(STEP, last)],
        axes[0],
        x="layers",
        hue="placement",
        logx=True,
        logy=True,
        band="logci",
        xlabel="depth L (layers)",
        ylabel="RMS(Δh) after the top layer",
        title=f"update of the last hidden state after {min(STEP, last)} AdamW steps",
    )
    fig.suptitle("Dey et al.: CompleteP vs standard parametrization (Pre-LN) across depth")
    return {"dey2025_depth_update": fig, **out}


EXPERIMENT = Experiment(
    name=NAME,
    paper="Dey et al. 2025, 'Don't be lazy: CompleteP enables compute-efficient deep transformers', arXiv 2505.01618",
    title="CompleteP's coordinate check is flat across depth; standard parametrization's grows; the best "
    "learning rate across depth",
    summary=__doc__.split("\n\n", 2)[2],
    command="lnscope check --paper dey2025",
    presets=PRESETS,
    plan=plan,
    figures=figures,
    claims=CLAIMS,
)
