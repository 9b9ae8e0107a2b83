"""CompleteP's learning-rate transfer claim (analysis/experiments/lr_transfer.py, dey2025's part `lr`):
the best log2 learning rate and its shift across depth against hand computation on synthetic loss
curves, and the tiny sweep end to end."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from analysis.experiments import EXPERIMENTS, dey2025
from analysis.experiments.claims import VERDICTS, check
from analysis.experiments.lr_transfer import QUANTITY, LRSweepSettings, best_log2_lr, best_lr_shift

GRID = (-9.0, -8.0, -7.0, -6.0, -5.0, -4.0)


def test_best_lr_is_the_parabolas_vertex_through_the_grid_minimum() -> None:
    # an exact parabola: the vertex is recovered wherever it lies between grid points
    for vertex in (-6.3, -7.5, -5.01):
        losses = 2.0 + 0.1 * (np.asarray(GRID) - vertex) ** 2
        assert best_log2_lr(losses, GRID) == pytest.approx(vertex, abs=1e-12)
    # by hand, around the minimum at -7 (neighbours 1.9 and 1.8): k* = -7 - 1/2 · (1.8 - 1.9)/(1.8 - 3.4 + 1.9)
    losses = np.array([2.5, 1.9, 1.7, 1.8, 2.2, 3.0])
    assert best_log2_lr(losses, GRID) == pytest.approx(-7 + 0.05 / 0.3, abs=1e-12)
    # a flat (V-shaped) neighbourhood never moves k* more than half a grid step
    assert best_log2_lr(np.array([3.0, 2.0, 1.0, 2.0, 3.0, 4.0]), GRID) == pytest.approx(-7.0)


def test_best_lr_at_the_edge_or_next_to_a_diverged_rate_is_the_grid_point() -> None:
    falling = np.array([3.0, 2.8, 2.6, 2.4, 2.2, 2.0])
    assert best_log2_lr(falling, GRID) == -4.0
    assert best_log2_lr(falling[::-1], GRID) == -9.0
    diverged = np.array([2.5, 2.2, 2.0, 1.9, np.inf, np.inf])  # the minimum's right neighbour diverged
    assert best_log2_lr(diverged, GRID) == -6.0
    assert np.isnan(best_log2_lr(np.full(6, np.inf), GRID))
    stacked = np.stack([falling, diverged, 2.0 + (np.asarray(GRID) + 6.5) ** 2])  # vectorized over leading axes
    np.testing.assert_allclose(best_log2_lr(stacked, GRID), [-4.0, -6.0, -6.5], atol=1e-12)
    with pytest.raises(ValueError, match="learning rates"):
        best_log2_lr(falling[:4], GRID)


def _sweep(best: dict[tuple[str, int], float], seeds: int = 4) -> pd.DataFrame:
    """final_train_loss rows of part "lr" = 1.8 + 0.05·(k − best[(placement, L)])² (+ a per-seed offset
    that does not move the vertex), at dey2025's quick depths and grid."""
    rows = [
        dict(
            part="lr", variant=p, quantity=QUANTITY, layers=depth, log2_lr=float(k), seed=s,
            value=1.8 + 0.05 * (k - kstar) ** 2 + 0.01 * s,
        )
        for (p, depth), kstar in best.items()
        for k in dey2025.LR_GRID
        for s in range(seeds)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_the_shift_and_the_claim_read_the_best_lr_per_depth() -> None:
    moving = {("pre", 2): -6.0, ("pre", 4): -6.8, ("pre", 8): -7.6}
    steady = {("completep", 2): -6.0, ("completep", 4): -6.1, ("completep", 8): -6.2}
    frame = _sweep({**moving, **steady})
    depths = dey2025.LR_DEPTHS
    assert best_lr_shift("lr", "pre", depths, dey2025.LR_GRID).value(frame) == pytest.approx(-1.6, abs=1e-9)
    assert best_lr_shift("lr", "completep", depths, dey2025.LR_GRID).value(frame) == pytest.approx(-0.2, abs=1e-9)
    claim = dey2025.lr_claim()
    result = check(claim, frame, n_boot=200)
    assert result.statistic == pytest.approx(1.4, abs=1e-9)
    assert result.verdict == ("reproduced" if 1.4 >= claim.threshold else "not reproduced")
    assert result.ci_low == pytest.approx(1.4, abs=1e-9) and result.ci_high == pytest.approx(1.4, abs=1e-9)
    # the opposite world: CompleteP's best learning rate moves, standard parametrization's stays
    swapped = _sweep(
        {("pre", d): k for (_, d), k in steady.items()} | {("completep", d): k for (_, d), k in moving.items()}
    )
    opposite = check(claim, swapped, n_boot=200)
    assert opposite.statistic == pytest.approx(-1.4, abs=1e-9) and opposite.verdict == "not reproduced"


def test_sweep_settings_reject_bad_grids() -> None:
    tiny = dey2025.PRESETS["tiny"].lr
    with pytest.raises(ValueError, match="evenly spaced"):
        dataclasses.replace(tiny, log2_lrs=(-8, -7, -5))
    with pytest.raises(ValueError, match="at least 3"):
        dataclasses.replace(tiny, log2_lrs=(-8, -7))
    with pytest.raises(ValueError, match="unknown"):
        dataclasses.replace(tiny, placements=("pre", "nope"))
    with pytest.raises(ValueError, match="ascending"):
        dataclasses.replace(tiny, depths=(4, 2))
    assert isinstance(tiny, LRSweepSettings)


def test_the_standard_arm_ignores_completeps_fields() -> None:
    """Every arm is built with CompleteP's α and L_base; Pre-LN must compute what it computes without
    them (only the placements that declare the multiplier read them)."""
    import flax.nnx as nnx
    import jax
    import jax.numpy as jnp

    from models import ModelConfig, Transformer

    tiny = dataclasses.replace(dey2025.PRESETS["tiny"].lr, width=16, head_dim=8, vocab=16, seq_len=8)
    swept = tiny.model("pre", 4)  # twice L_base: completep's multiplier is not 1 here
    plain = ModelConfig(**{**vars(swept), "completep_alpha": 1.0, "completep_base_layers": 1})
    assert (swept.completep_alpha, swept.completep_base_layers) == (tiny.alpha, tiny.base_depth) != (1.0, 1)
    tokens = jnp.arange(8, dtype=jnp.int32).reshape(1, 8) % 16
    with jax.numpy_dtype_promotion("standard"):
        a = Transformer(swept, nnx.Rngs(0))(tokens)
        b = Transformer(plain, nnx.Rngs(0))(tokens)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    completep = Transformer(dataclasses.replace(swept, placement="completep"), nnx.Rngs(0))
    with jax.numpy_dtype_promotion("standard"):
        assert not np.array_equal(np.asarray(completep(tokens)), np.asarray(a)), "the fields do reach completep"


@pytest.mark.slow
def test_tiny_lr_sweep_gives_verdict_rows_with_intervals() -> None:
    """The tiny sweep runs (both placements, the claim's depths and grid at the test suite's widths),
    the shift claim gives a verdict with a finite interval, and the figure draws."""
    import matplotlib.pyplot as plt

    exp = EXPERIMENTS["dey2025"]
    s = exp.preset("tiny").lr
    frame = exp.run("tiny", parts=[dey2025.LR_PART])
    sweep = frame[frame["quantity"] == QUANTITY]
    assert len(sweep) == len(s.placements) * len(s.depths) * len(s.log2_lrs) * s.seeds
    assert np.isfinite(sweep["value"]).all() and (sweep["value"] > 0).all()
    # at L_base CompleteP is standard Pre-LN: multiplier 1, lr and ε rules 1, the same initialization
    base = sweep[sweep["layers"] == s.base_depth]
    base = base.pivot_table(index=["log2_lr", "seed"], columns="variant", values="value")
    np.testing.assert_allclose(base["completep"], base["pre"], rtol=1e-6)
    result = check(dey2025.lr_claim(), frame, n_boot=200)
    assert result.verdict in VERDICTS and result.n_seeds == s.seeds
    assert np.isfinite([result.statistic, result.ci_low, result.ci_high]).all()
    assert result.ci_low <= result.statistic <= result.ci_high
    figs = exp.figures(frame)
    assert set(figs) == {"dey2025_lr_transfer"}
    for fig in figs.values():
        plt.close(fig)
