"""seed_summary against a hand computation and the t-table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.stats import bootstrap_ci, seed_summary, t_quantile

T_975_DOF_3 = 3.182446305  # tabulated Student-t 97.5% quantile, 3 degrees of freedom


def test_seed_summary_matches_hand_computation() -> None:
    values = np.array([1.0, 2.0, 4.0, 7.0])
    df = pd.DataFrame({"placement": "post", "layer": 0, "seed": range(4), "value": values})
    row = seed_summary(df, ["placement", "layer"]).iloc[0]
    half = T_975_DOF_3 * values.std(ddof=1) / math.sqrt(4)
    assert row["n"] == 4 and row["mean"] == pytest.approx(values.mean())
    assert row["ci_low"] == pytest.approx(values.mean() - half, rel=1e-6)
    assert row["ci_high"] == pytest.approx(values.mean() + half, rel=1e-6)


def test_single_seed_has_no_interval_and_nan_is_kept() -> None:
    df = pd.DataFrame({"g": ["a", "b", "b"], "seed": [0, 0, 1], "value": [1.0, np.nan, 2.0]})
    out = seed_summary(df, ["g"]).set_index("g")
    assert np.isnan(out.loc["a", "ci_low"]) and out.loc["a", "mean"] == 1.0
    assert np.isnan(out.loc["b", "mean"]), "a diverged seed must not vanish from the mean"


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match="placement"):
        seed_summary(pd.DataFrame({"seed": [0], "value": [1.0]}), ["placement"])


def test_t_quantile_table() -> None:
    assert t_quantile(0.975, 3) == pytest.approx(T_975_DOF_3, abs=1e-5)


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    rng = np.random.default_rng(3)
    table = rng.normal(5.0, 1.0, size=(8, 1))
    mean = lambda m: m[..., 0]
    first = bootstrap_ci(table, mean, n_boot=500, seed=7)
    assert first == bootstrap_ci(table, mean, n_boot=500, seed=7)
    assert first != bootstrap_ci(table, mean, n_boot=500, seed=8)
    point, lo, hi = first
    assert point == pytest.approx(table.mean())
    assert lo < point < hi
    # the percentile interval of a mean is close to the normal one: ± 1.96 s/√n (within 30% at n = 8)
    half = 1.96 * table.std(ddof=0) / math.sqrt(len(table))
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.3)
    assert bootstrap_ci(np.ones((5, 2)), lambda m: m[..., 0] / m[..., 1]) == (1.0, 1.0, 1.0)


def test_bootstrap_keeps_non_finite_values() -> None:
    with_inf = np.array([[1.0], [np.inf], [2.0]])
    point, lo, hi = bootstrap_ci(with_inf, lambda m: m[..., 0], n_boot=200)
    assert point == math.inf and hi == math.inf and lo >= 1.0
    with_nan = np.array([[1.0], [np.nan], [2.0]])
    point, lo, hi = bootstrap_ci(with_nan, lambda m: m[..., 0], n_boot=200)
    assert math.isnan(point) and math.isnan(lo) and math.isnan(hi)
