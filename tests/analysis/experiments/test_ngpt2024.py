"""The nGPT training claim (analysis/experiments/ngpt2024.py): its budget-fraction statistic against hand
computations on synthetic curves, its rows of a run with a diverged seed, and its tiny preset end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.experiments import EXPERIMENTS, ngpt2024
from analysis.experiments.claims import VERDICTS, check
from analysis.train import TrainResult


def test_budget_fraction_matches_hand_computation() -> None:
    curve = np.array([4.0, 3.0, 2.0, 1.0])  # evaluations at 0, T/3, 2T/3, T
    # 2.5 is crossed halfway between the 2nd and 3rd evaluation: step 1.5 of 3 -> half the budget
    assert ngpt2024.budget_fraction(curve, 2.5) == pytest.approx(0.5)
    assert ngpt2024.budget_fraction(curve, 1.0) == pytest.approx(1.0)  # reached exactly at the end
    assert ngpt2024.budget_fraction(curve, 5.0) == 0.0  # already below at step 0
    assert ngpt2024.budget_fraction(curve, 0.5) == math.inf  # never reached
    # the first crossing counts, not a later one; vectorized over leading (bootstrap) axes
    bumpy = np.array([[4.0, 2.0, 3.0, 1.0], [np.inf, 3.0, 2.5, 2.0]])
    got = ngpt2024.budget_fraction(bumpy, np.array([2.8, 2.8]))
    assert got == pytest.approx([(1.2 / 2.0) / 3, (1 + 0.2 / 0.5) / 3])


def _curves(ngpt_scale: float, seeds=(0, 1, 2)) -> pd.DataFrame:
    """Validation curves 3·exp(-k·t/T) + 1 at t = 0, 10, ..., 100 for both arms, nGPT's rate `ngpt_scale`
    times Pre-LN's (k = 2), and a training-loss row per step as a decoy."""
    rows = []
    for variant, k in (("pre", 2.0), ("ngpt", 2.0 * ngpt_scale)):
        for s in seeds:
            for t in range(0, 101, 10):
                value = 3.0 * math.exp(-k * t / 100) + 1.0 + 0.001 * s
                for quantity in ("val_loss", "loss"):
                    rows.append(dict(part="curves", variant=variant, stack="model", quantity=quantity,
                                     seed=s, step=t, value=value + (quantity == "loss")))  # fmt: skip
    return pd.DataFrame(rows)


def test_steps_to_match_reads_the_seed_mean_curves() -> None:
    frame = _curves(ngpt_scale=4.0)
    # nGPT's curve is Pre-LN's at 4x the speed, so it reaches Pre-LN's final loss at T/4; the evaluations
    # every T/10 put T/4 between two of them, where linear interpolation of the exponential is slightly late
    t = np.arange(0, 101, 10) / 100
    ngpt, target = 3.0 * np.exp(-8.0 * t) + 1.001, 3.0 * math.exp(-2.0) + 1.001
    i = int(np.argmax(ngpt <= target))
    hand = (i - 1 + (ngpt[i - 1] - target) / (ngpt[i - 1] - ngpt[i])) / 10
    assert ngpt2024.steps_to_match().value(frame) == pytest.approx(hand, rel=1e-9)
    assert 0.25 < hand < 0.3
    assert ngpt2024.final_gap().value(frame) == pytest.approx(3.0 * (math.exp(-8.0) - math.exp(-2.0)), rel=1e-9)
    faster, slower = ngpt2024.CLAIMS
    assert check(faster, _curves(ngpt_scale=8.0), n_boot=200).verdict == "reproduced"
    slow = check(faster, _curves(ngpt_scale=0.5), n_boot=200)  # never reaches it: +inf, the other side
    assert slow.verdict == "not reproduced" and slow.statistic == math.inf
    assert check(slower, _curves(ngpt_scale=0.5), n_boot=200).verdict == "not reproduced"


def test_figure_draws_seeds_and_medians_even_when_an_arm_diverged() -> None:
    import matplotlib.pyplot as plt

    frame = _curves(ngpt_scale=0.5).assign(lr=1e-2, layers=2, d_model=64)
    for data in (frame, frame.assign(value=np.where(frame["variant"] == "ngpt", np.inf, frame["value"]))):
        fig = ngpt2024.figures(data)["ngpt2024_curves"]
        ax = fig.axes[0]
        assert len(ax.lines) == 2 * (3 + 1) + 1  # per arm: 3 seeds and the median; Pre-LN's final loss
        assert ax.get_ylim()[1] > ax.get_ylim()[0] and np.isfinite(ax.get_ylim()).all()
        plt.close(fig)


def test_curve_rows_count_a_diverged_seed_as_infinite_loss() -> None:
    cfg = ngpt2024.PRESETS["tiny"].config("ngpt", 1e-2, (0, 1))
    steps = range(0, cfg.steps + 1, cfg.eval_every)  # 0, 5, 10
    curves = pd.DataFrame(
        [dict(run="r", seed=s, step=t, quantity="val_loss", value=4.0 - 0.1 * t) for s in (0, 1) for t in steps]
    )
    curves = curves[~((curves["seed"] == 1) & (curves["step"] == 10))]  # seed 1 diverged at step 5
    result = TrainResult(cfg, "r", {0: "finished", 1: "diverged"}, {0: None, 1: 5}, curves, pd.DataFrame())
    rows = ngpt2024.curve_rows(result, cfg)
    table = rows.pivot(index="seed", columns="step", values="value")
    assert table.loc[0].tolist() == [4.0, 3.5, 3.0]
    assert table.loc[1].tolist() == [4.0, math.inf, math.inf]
    assert set(rows["placement"]) == {"ngpt"} and set(rows["lr"]) == {1e-2}


def test_presets_name_both_arms_and_read_whole_curves() -> None:
    with pytest.raises(ValueError, match="divisor of steps"):
        ngpt2024.Preset(**{**ngpt2024.PRESETS["tiny"].__dict__, "eval_every": 3})
    with pytest.raises(ValueError, match="each arm"):
        ngpt2024.Preset(**{**ngpt2024.PRESETS["tiny"].__dict__, "lr": {"pre": 1e-3}})
    quick = ngpt2024.PRESETS["quick"]
    for claim in ngpt2024.CLAIMS:
        assert claim.when == "training" and claim.needs == (ngpt2024.PART,)
        if claim.calibration is not None:
            assert set(claim.calibration.held_out_seeds) == set(quick.seeds)
            assert not set(claim.calibration.seeds) & set(quick.seeds)
        else:
            assert "not calibrated" in claim.threshold_note, claim.id
    # each arm's rate is the best of its grid on the calibration seeds (recorded by tune)
    for arm, lr in quick.lr.items():
        assert lr in quick.lr_grid[arm]


@pytest.mark.slow
def test_tiny_preset_end_to_end() -> None:
    """Both arms train, every claim gives a verdict with an interval around its statistic, the learning-rate
    grid runs, the figure draws."""
    import matplotlib.pyplot as plt

    exp = EXPERIMENTS["ngpt2024"]
    frame = exp.run("tiny")
    for claim in exp.claims:
        result = check(claim, frame, n_boot=200)
        assert result.verdict in VERDICTS and result.n_seeds == 2, result
        assert result.ci_low <= result.statistic <= result.ci_high, result
    gap = check(exp.claims[1], frame, n_boot=200)
    assert np.isfinite([gap.statistic, gap.ci_low, gap.ci_high]).all()
    # the learning-rate grid on other seeds: one row per (arm, lr), each arm's lowest final loss marked
    grid = ngpt2024.tune("tiny", seeds=(5, 6))
    assert sorted(grid["variant"]) == ["ngpt", "pre"] and grid["best"].all()
    assert set(grid["lr"]) == {3e-3, 1e-2} and np.isfinite(grid["final_val_loss"]).all()
    figs = exp.figures(frame)
    assert list(figs) == ["ngpt2024_curves"]
    for fig in figs.values():
        plt.close(fig)
