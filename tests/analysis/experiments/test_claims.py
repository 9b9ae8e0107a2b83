"""Claims, statistics and verdicts on synthetic tidy frames with known answers.

Every kind of statistic is fed data clearly on one side of its threshold, clearly on the other, and
a mix of the two (half the seeds from each), and the verdict must be reproduced / not reproduced /
inconclusive accordingly; its point estimate is compared with an independent numpy computation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.experiments import claims as C

N_SEEDS = 8
LAYERS = 6
# Point estimates are float64 reductions of the same numbers in a different order: only rounding differs.
REF_RTOL = 1e-9


def rows(
    variant: str,
    per_seed: np.ndarray,
    *,
    quantity: str = "q",
    site: str = "s",
    layers: int = LAYERS,
    seed_offset: int = 0,
) -> pd.DataFrame:
    """Tidy rows of one variant: per_seed is (n_seeds,) for a stack-level value or (n_seeds, L) per layer."""
    per_seed = np.asarray(per_seed, float)
    n = per_seed.shape[0]
    if per_seed.ndim == 1:
        return pd.DataFrame(
            {
                "seed": np.arange(n) + seed_offset,
                "variant": variant,
                "quantity": quantity,
                "site": site,
                "stack": "decoder",
                "layer": -1,
                "layers": layers,
                "part": "p",
                "value": per_seed,
            }
        )
    L = per_seed.shape[1]
    return pd.DataFrame(
        {
            "seed": np.repeat(np.arange(n) + seed_offset, L),
            "variant": variant,
            "quantity": quantity,
            "site": site,
            "stack": "decoder",
            "layer": np.tile(np.arange(L), n),
            "layers": L,
            "part": "p",
            "value": per_seed.reshape(-1),
        }
    )


def feat(name: str, variant: str, layer=None, **where) -> C.Feature:
    return C.Feature(name, {"part": "p", "variant": variant, "quantity": "q", **where}, layer=layer)


def noise(rng: np.random.Generator, shape, scale: float = 0.02) -> np.ndarray:
    return 1.0 + scale * rng.standard_normal(shape)


# Each kind: (statistic, threshold, make(target, rng) -> frame with the statistic ≈ target, reference(frame)).
def _ratio():
    stat = C.ratio(feat("a", "a", layer=-1), feat("b", "b", layer=0), "a_top / b_bottom")

    def make(target, rng, off=0):
        a = np.ones((N_SEEDS, LAYERS)) * noise(rng, (N_SEEDS, 1))
        a[:, -1] *= 2 * target
        b = 2 * np.ones((N_SEEDS, LAYERS)) * noise(rng, (N_SEEDS, 1))
        return pd.concat([rows("a", a, seed_offset=off), rows("b", b, seed_offset=off)])

    ref = lambda f: _piv(f, "a")[LAYERS - 1].mean() / _piv(f, "b")[0].mean()
    return stat, 10.0, (30.0, 3.0), make, ref


def _difference():
    stat = C.difference(feat("a", "a"), feat("b", "b"), "a - b")

    def make(target, rng, off=0):
        return pd.concat(
            [
                rows("a", 1 + target + 0.01 * rng.standard_normal(N_SEEDS), seed_offset=off),
                rows("b", np.ones(N_SEEDS) + 0.01 * rng.standard_normal(N_SEEDS), seed_offset=off),
            ]
        )

    ref = lambda f: f[f.variant == "a"].value.mean() - f[f.variant == "b"].value.mean()
    return stat, 0.5, (1.0, 0.0), make, ref


def _value():
    stat = C.value(feat("a", "a"), "mean of a")
    make = lambda target, rng, off=0: rows("a", target + 0.01 * rng.standard_normal(N_SEEDS), seed_offset=off)
    return stat, 0.93, (0.97, 0.85), make, lambda f: f.value.mean()


def _profile_slope():
    stat = C.profile_slope(feat("a", "a", layer="all"), "slope of ln profile")

    def make(target, rng, off=0):
        return rows("a", np.exp(target * np.arange(LAYERS))[None, :] * noise(rng, (N_SEEDS, LAYERS)), seed_offset=off)

    ref = lambda f: np.polyfit(np.arange(LAYERS), np.log(_piv(f, "a").mean(axis=0)), 1)[0]
    return stat, 0.2, (0.35, 0.05), make, ref


def _profile_r2():
    stat = C.profile_r2(feat("a", "a", layer="all"), "R² of a line fit")
    x = np.arange(LAYERS, dtype=float)

    def make(target, rng, off=0):
        # a line (R² 1) or a line with curvature (R² 0.84); a half-and-half mix spans 0.93-0.99
        shape = x if target > 0.95 else x + 0.3 * (x - x.mean()) ** 2
        return rows("a", (1 + shape)[None, :] * noise(rng, (N_SEEDS, LAYERS), 0.01), seed_offset=off)

    def ref(f):
        y = _piv(f, "a").mean(axis=0).to_numpy()
        fit = np.polyval(np.polyfit(x, y, 1), x)
        return 1 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum()

    return stat, 0.97, (1.0, 0.84), make, ref


DEPTHS = (3, 6, 12, 24)


def _depth_slope():
    points = {d: feat(f"L{d}", "a", layer=-1, layers=d) for d in DEPTHS}
    stat = C.depth_slope(points, "log-log slope vs depth")

    def make(target, rng, off=0):
        return pd.concat(
            [rows("a", (d**target) * np.ones((N_SEEDS, d)) * noise(rng, (N_SEEDS, 1)), seed_offset=off) for d in DEPTHS]
        )

    def ref(f):
        means = [f[(f.layers == d) & (f.layer == d - 1)].value.mean() for d in DEPTHS]
        return np.polyfit(np.log(DEPTHS), np.log(means), 1)[0]

    return stat, -0.3, (0.0, -0.5), make, ref


def _extreme_max():
    fs = tuple(feat(f"v{i}", f"v{i}") for i in range(3))
    stat = C.extreme(fs, "max", "largest mean")

    def make(target, rng, off=0):
        return pd.concat(
            [rows(f"v{i}", (target - i * 0.5) + 0.01 * rng.standard_normal(N_SEEDS), seed_offset=off) for i in range(3)]
        )

    ref = lambda f: f.groupby("variant").value.mean().max()
    return stat, 3.0, (4.0, 2.0), make, ref


def _extreme_ratio_min():
    pairs = tuple((feat(f"n{i}", f"v{i}", layer=0), feat(f"d{i}", f"v{i}", layer=-1)) for i in range(2))
    stat = C.extreme_ratio(pairs, "min", "smallest ratio")

    def make(target, rng, off=0):
        frames = []
        for i in range(2):
            prof = np.ones((N_SEEDS, LAYERS)) * noise(rng, (N_SEEDS, 1))
            prof[:, 0] *= target * (1 + i)
            frames.append(rows(f"v{i}", prof, seed_offset=off))
        return pd.concat(frames)

    ref = lambda f: min(_piv(f, f"v{i}")[0].mean() / _piv(f, f"v{i}")[LAYERS - 1].mean() for i in range(2))
    return stat, 0.5, (1.0, 0.25), make, ref


def _closer_to_one():
    a = (feat("an", "a", layer=0), feat("ad", "a", layer=-1))
    b = (feat("bn", "b", layer=0), feat("bd", "b", layer=-1))
    stat = C.closer_to_one(a, b, "|ln r_b| - |ln r_a|")

    def make(target, rng, off=0):
        # r_b = e (|ln| = 1); r_a = e^(1 - target), so the statistic is `target` for target <= 1
        frames = []
        for v, r in (("a", math.exp(1 - target)), ("b", math.e)):
            prof = np.ones((N_SEEDS, LAYERS)) * noise(rng, (N_SEEDS, 1), 0.005)
            prof[:, 0] *= r
            frames.append(rows(v, prof, seed_offset=off))
        return pd.concat(frames)

    def ref(f):
        r = {v: _piv(f, v)[0].mean() / _piv(f, v)[LAYERS - 1].mean() for v in ("a", "b")}
        return abs(math.log(r["b"])) - abs(math.log(r["a"]))

    return stat, 0.0, (0.5, -0.5), make, ref


def _max_abs_difference():
    stat = C.max_abs_difference(feat("a", "a", layer="all"), feat("b", "b", layer="all"), "max |a - b|")

    def make(target, rng, off=0):
        base = rng.random((N_SEEDS, LAYERS))
        shifted = base.copy()
        shifted[:, 2] += target
        return pd.concat([rows("a", shifted, seed_offset=off), rows("b", base, seed_offset=off)])

    ref = lambda f: (_piv(f, "a").mean(axis=0) - _piv(f, "b").mean(axis=0)).abs().max()
    return stat, 5e-3, (1e-2, 0.0), make, ref


def _piv(frame: pd.DataFrame, variant: str) -> pd.DataFrame:
    return frame[frame.variant == variant].pivot(index="seed", columns="layer", values="value")


KINDS = {
    "ratio": _ratio,
    "difference": _difference,
    "value": _value,
    "profile_slope": _profile_slope,
    "profile_r2": _profile_r2,
    "depth_slope": _depth_slope,
    "max": _extreme_max,
    "min_ratio": _extreme_ratio_min,
    "closer_to_one": _closer_to_one,
    "max_abs_difference": _max_abs_difference,
}


def claim(stat: C.Statistic, threshold, direction: str) -> C.Claim:
    return C.Claim(
        id="xu2019.synthetic",
        paper="xu2019",
        source="test",
        statement="test",
        method_form="test",
        experiment="xu2019",
        statistic=stat,
        threshold=threshold,
        direction=direction,
        threshold_note="test",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_verdict_flips_with_the_data(kind: str) -> None:
    """Above the threshold: reproduced for ">=", not reproduced for "<="; below: the reverse; half the
    seeds from each side: inconclusive for both. The point estimate matches an independent computation."""
    stat, threshold, (high, low), make, ref = KINDS[kind]()
    rng = np.random.default_rng(0)
    above, below = make(high, rng), make(low, rng)
    mixed = pd.concat([above[above.seed < N_SEEDS // 2], below[below.seed >= N_SEEDS // 2]])
    for frame in (above, below, mixed):
        assert stat.value(frame) == pytest.approx(ref(frame), rel=REF_RTOL, abs=1e-12)
    expect = {">=": ("reproduced", "not reproduced"), "<=": ("not reproduced", "reproduced")}
    for direction, (for_above, for_below) in expect.items():
        c = claim(stat, threshold, direction)
        results = [C.check(c, f) for f in (above, below, mixed)]
        got = [r.verdict for r in results]
        assert got == [for_above, for_below, "inconclusive"], (
            kind,
            direction,
            [(r.statistic, r.ci_low, r.ci_high) for r in results],
        )
        for r in results:
            assert r.ci_low <= r.statistic <= r.ci_high or math.isclose(r.ci_low, r.ci_high)
            assert r.n_seeds == N_SEEDS


@pytest.mark.parametrize("kind", ["ratio", "difference", "depth_slope"])
def test_interval_direction(kind: str) -> None:
    """direction "in": inside the interval reproduced, outside not reproduced, straddling its edge inconclusive."""
    stat, threshold, (high, low), make, _ = KINDS[kind]()
    rng = np.random.default_rng(1)
    above, below = make(high, rng), make(low, rng)
    mixed = pd.concat([above[above.seed < N_SEEDS // 2], below[below.seed >= N_SEEDS // 2]])
    around_high = (high - abs(high) * 0.5 - 0.1, high + abs(high) * 0.5 + 0.1)
    c = claim(stat, around_high, "in")
    assert C.check(c, above).verdict == "reproduced"
    assert C.check(c, below).verdict == "not reproduced"
    edge = claim(stat, (threshold, threshold + 10 * abs(high - low) + 10), "in")
    assert C.check(edge, mixed).verdict == "inconclusive"


def test_verdict_rule_table() -> None:
    cases = [
        ((1.0, 2.0), 0.5, ">=", "reproduced"),
        ((1.0, 2.0), 1.0, ">=", "reproduced"),
        ((0.1, 0.4), 0.5, ">=", "not reproduced"),
        ((0.4, 0.6), 0.5, ">=", "inconclusive"),
        ((0.1, 0.4), 0.5, "<=", "reproduced"),
        ((0.6, 0.7), 0.5, "<=", "not reproduced"),
        ((1.0, 2.0), (0.5, 3.0), "in", "reproduced"),
        ((4.0, 5.0), (0.5, 3.0), "in", "not reproduced"),
        ((0.1, 0.2), (0.5, 3.0), "in", "not reproduced"),
        ((2.0, 4.0), (0.5, 3.0), "in", "inconclusive"),
        ((math.inf, math.inf), 50.0, ">=", "reproduced"),
        ((math.nan, math.nan), 0.5, ">=", "inconclusive"),
    ]
    for (lo, hi), threshold, direction, want in cases:
        assert C.verdict(lo, hi, threshold, direction) == want, (lo, hi, threshold, direction)


def test_diverged_and_missing_seeds_are_named() -> None:
    stat = C.difference(feat("a", "a"), feat("b", "b"), "a - b")
    frame = pd.concat([rows("a", [3.0, 3.1, np.inf, 3.2]), rows("b", [1.0, 1.1, 1.0, 1.2])])
    result = C.check(claim(stat, 0.5, ">="), frame)
    assert result.verdict == "reproduced" and result.statistic == math.inf
    assert "non-finite" in result.note and "[2]" in result.note
    missing = pd.concat([rows("a", [3.0, 3.1, 3.0]), rows("b", [1.0, 1.1, 1.0, 1.2])])  # seed 3 lacks a
    result = C.check(claim(stat, 0.5, ">="), missing)
    assert result.verdict == "inconclusive" and "[3]" in result.note


def test_one_seed_is_inconclusive() -> None:
    stat = C.value(feat("a", "a"), "a")
    result = C.check(claim(stat, 0.5, ">="), rows("a", [3.0]))
    assert result.verdict == "inconclusive" and "no interval" in result.note


def test_feature_errors_name_the_problem() -> None:
    frame = pd.concat([rows("a", np.ones((3, LAYERS))), rows("b", np.ones(3))])
    with pytest.raises(ValueError, match=r"variant='c'.*available: \['a', 'b'\]"):
        feat("x", "c").values(frame)
    with pytest.raises(ValueError, match="several rows per seed; they differ in .*layer"):
        feat("x", "a").values(frame)  # a profile read as a scalar
    assert feat("x", "a", layer=-1).values(frame).shape == (3, 1)
    with pytest.raises(ValueError, match="layer must be"):
        C.Feature("x", {}, layer="top")
    with pytest.raises(ValueError, match="unknown transform"):
        C.Feature("x", {}, transform="cube")


def test_claim_validation() -> None:
    stat = C.value(feat("a", "a"), "a")
    good = dict(
        id="xu2019.x",
        paper="xu2019",
        source="s",
        statement="s",
        method_form="m",
        experiment="xu2019",
        statistic=stat,
        threshold=1.0,
        direction=">=",
        threshold_note="n",
    )
    C.Claim(**good)
    for change, match in (
        (dict(paper="nobody2020"), "unknown paper"),
        (dict(id="x"), "must be 'xu2019.<name>'"),
        (dict(direction=">"), "unknown direction"),
        (dict(direction="in"), r"needs threshold \(low, high\)"),
        (dict(threshold=(1.0, 2.0)), "finite number"),
        (dict(threshold=math.nan), "finite number"),
        (dict(when="later"), "when must be"),
    ):
        with pytest.raises(ValueError, match=match):
            C.Claim(**{**good, **change})


def test_json_safe() -> None:
    row = C.json_safe(
        {"a": math.nan, "b": math.inf, "c": -math.inf, "d": (1.0, 2.0), "e": np.float32(0.5), "f": np.int64(3)}
    )
    assert row == {"a": None, "b": "inf", "c": "-inf", "d": [1.0, 2.0], "e": 0.5, "f": 3}
