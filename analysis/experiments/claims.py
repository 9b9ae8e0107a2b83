"""Claims as data, and the hypothesis check that turns one into a verdict.

A claim is a paper's statement made falsifiable: the experiment whose tidy frame it reads, a named
statistic, a threshold and a direction. The statistic is built from *features*, each one value per
seed selected from the tidy frame (e.g. ‖∂ℒ/∂W2‖ of the top decoder layer, or a whole per-layer
profile), and a function of their means over seeds (a ratio of means, a fitted slope of the mean
profile, a difference of mean final losses). Seeds are the unit of uncertainty: `check` resamples
seeds with replacement (`analysis.stats.bootstrap_ci`, percentile bootstrap) and reads the verdict off
the interval:

    reproduced       the whole interval lies on the claim's side of the threshold
    not reproduced   the whole interval lies on the other side
    inconclusive     the interval straddles the threshold (or is NaN, or there is only one seed)

For direction "in" the claim's side is the closed interval [low, high] and the other side is
everything disjoint from it. A claim that does not reproduce is a finding and is reported as such.

A claim records the paper's setting next to ours (`paper_setting`, `our_setting`), and a claim whose
threshold was set by a calibration run carries its `Calibration`: the calibration's seeds (disjoint
from the held-out seeds the preset checks), the statistic measured there, and the rule
(`THRESHOLD_RULES`) that turned it into the threshold; the claim's threshold must equal the rule's.
A claim replaced by a restatement stays visible as a `Superseded` record (its id, statement, why,
last verdict and statistic, and the ids that replace it).

    from analysis.experiments import EXPERIMENTS
    from analysis.experiments.claims import Claim, Feature, ratio, check
    frame = EXPERIMENTS["takase2022"].run("quick")
    mine = Claim(id="takase2022.my_ratio", paper="takase2022", source="my notebook", statement="...",
                 method_form="...", experiment="takase2022",
                 statistic=ratio(Feature("top", {...}, layer=-1), Feature("bottom", {...}, layer=0)),
                 threshold=10.0, direction=">=", threshold_note="mine, set before looking")
    check(mine, frame)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.stats import bootstrap_ci

PAPERS: dict[str, str] = {
    "takase2022": "Takase, Kiyono, Kobayashi, Suzuki 2022/2023, B2T connection (arXiv 2206.00330)",
    "xie2023": "Xie et al. 2023, ResiDual (arXiv 2304.14802)",
    "xiong2020": "Xiong et al. 2020, On Layer Normalization in the Transformer Architecture (arXiv 2002.04745)",
    "liu2021": "Liu, Ren, Zhang, Sun, Zou 2021, Rethinking Skip Connection with Layer Normalization (arXiv 2105.07205)",
    "xu2019": "Xu, Sun, Zhang, Zhao, Lin 2019, Understanding and Improving Layer Normalization (arXiv 1911.07013)",
    "deepnorm_admin": "Wang et al. 2022, DeepNet (arXiv 2203.00555); Liu et al. 2020, Admin (arXiv 2004.08249)",
    "sun2025": "Sun et al. 2025, The Curse of Depth in Large Language Models (arXiv 2502.05795)",
    "kedia2024": "Kedia et al. 2024, Transformers Get Stable: DeepScaleLM (arXiv 2403.09635)",
    "peri_olmo2": "Kim et al. 2025, Peri-LN (arXiv 2502.02732); OLMo et al. 2025, OLMo 2 (arXiv 2501.00656)",
    "dey2025": "Dey et al. 2025, Don't be lazy: CompleteP (arXiv 2505.01618)",
    "ngpt2024": "Loshchilov, Hsieh, Sun, Ginsburg 2024, nGPT: Normalized Transformer (arXiv 2410.01131)",
}
DIRECTIONS = (">=", "<=", "in")
VERDICTS = ("reproduced", "not reproduced", "inconclusive")
WHEN = ("init", "training")
N_BOOT = (
    2000  # resamples: the 95% endpoints vary by ~1.5% of the interval width across resampler seeds (8 seeds, a ratio)
)

# Per-seed transforms a feature may apply before seeds are averaged (a registry, not if-branches).
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda v: v,
    "square": np.square,
    "log": np.log,
}


# ---------------------------------------------------------------------------------------------
# Features: one value (or one per-layer profile) per seed, selected from a tidy frame.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Feature:
    """Per-seed values selected from the tidy frame.

    Attributes:
        name: unique within its statistic (the key its seed means are passed under).
        where: column filters; a scalar means equality, a list/tuple membership.
        layer: which layer rows: an int >= 0 (from the bottom), an int < 0 (from the top: -1 is the
            last layer of each run's stack, read from the `layers` column), "all" (one column per
            layer >= 0, bottom first), or None (the selection already holds one row per seed).
        transform: key of TRANSFORMS applied per seed before averaging (e.g. "square": ‖x‖²/d from
            the RMS ‖x‖/√d).
    """

    name: str
    where: Mapping[str, Any]
    layer: int | str | None = None
    transform: str = "identity"

    def __post_init__(self) -> None:
        if not (
            self.layer is None
            or self.layer == "all"
            or (isinstance(self.layer, int) and not isinstance(self.layer, bool))
        ):
            raise ValueError(f"feature {self.name!r}: layer must be an int, 'all' or None, got {self.layer!r}")
        if self.transform not in TRANSFORMS:
            raise ValueError(
                f"feature {self.name!r}: unknown transform {self.transform!r}; valid: {', '.join(TRANSFORMS)}"
            )
        object.__setattr__(self, "where", dict(self.where))

    def describe(self) -> str:
        filters = ", ".join(f"{k}={v!r}" for k, v in self.where.items())
        layer = "" if self.layer is None else ", every layer" if self.layer == "all" else f", layer {self.layer}"
        return f"{self.name}: [{filters}{layer}]" + ("" if self.transform == "identity" else f" ({self.transform})")

    def values(self, frame: pd.DataFrame) -> pd.DataFrame:
        """(n_seeds, m) table, index `seed`; m = 1, or the number of layers for layer="all"."""
        sel = _select(frame, self.where, f"feature {self.name!r}")
        if self.layer == "all":
            sel = sel[sel["layer"] >= 0]
            column = sel["layer"]
        elif isinstance(self.layer, int):
            target = self.layer if self.layer >= 0 else sel["layers"] + self.layer
            sel = sel[sel["layer"] == target]
            column = pd.Series(0, index=sel.index)
        else:
            column = pd.Series(0, index=sel.index)
        if sel.empty:
            raise ValueError(f"feature {self.name!r}: no rows at layer {self.layer!r} with {self.where}")
        keys = pd.DataFrame({"seed": sel["seed"].to_numpy(), "column": column.to_numpy()})
        dup = keys.duplicated(keep=False).to_numpy()
        if dup.any():
            keys_used = ("value", "seed", "layer") if self.layer == "all" else ("value", "seed")
            varying = [c for c in sel.columns if c not in keys_used and sel[dup][c].nunique() > 1]
            raise ValueError(
                f"feature {self.name!r}: several rows per seed{' and layer' if self.layer == 'all' else ''}; "
                f"they differ in {varying}. Narrow `where`."
            )
        table = pd.DataFrame({"seed": keys["seed"], "column": keys["column"], "value": sel["value"].to_numpy(float)})
        table = table.pivot(index="seed", columns="column", values="value").sort_index(axis=1)
        with np.errstate(all="ignore"):
            return table.apply(lambda col: TRANSFORMS[self.transform](col.to_numpy()))


def _select(frame: pd.DataFrame, where: Mapping[str, Any], who: str) -> pd.DataFrame:
    """Rows matching every filter; the first filter that empties the selection is named with the
    values its column takes among the rows that passed the earlier ones."""
    mask = np.ones(len(frame), dtype=bool)
    for col, want in where.items():
        if col not in frame.columns:
            raise ValueError(f"{who}: cannot filter on column {col!r}; the frame has {list(frame.columns)}")
        hit = (
            frame[col].isin(list(want)).to_numpy()
            if isinstance(want, (list, tuple, set))
            else (frame[col] == want).to_numpy()
        )
        if not (mask & hit).any():
            available = sorted(map(str, pd.unique(frame.loc[mask, col])))
            raise ValueError(
                f"{who}: no rows with {col}={want!r} (after the filters before it); available: {available}"
            )
        mask &= hit
    return frame[mask]


# ---------------------------------------------------------------------------------------------
# Statistics: features -> per-seed table -> a function of the seed means.
# ---------------------------------------------------------------------------------------------
Combine = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Statistic:
    """A named statistic of seed means of per-seed features.

    Attributes:
        kind: the constructor that made it ("ratio", "profile_slope", ...); the catalogue groups by it.
        description: what the number is, in words and symbols.
        features: the per-seed features it reads.
        combine: maps {feature name: seed means of shape (..., m)} to values of shape (...),
            vectorized over the leading (bootstrap) axes.
    """

    kind: str
    description: str
    features: tuple[Feature, ...]
    combine: Combine = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"statistic {self.kind!r}: feature names must be unique, got {names}")

    def table(self, frame: pd.DataFrame) -> tuple[np.ndarray, dict[str, slice], list[int]]:
        """(n_seeds, k) per-seed table (seeds aligned; a seed missing from a feature is NaN there),
        the column slice of each feature, and the seeds."""
        parts = [f.values(frame) for f in self.features]
        seeds = sorted(set().union(*(p.index for p in parts)))
        layout, start = {}, 0
        for f, p in zip(self.features, parts):
            layout[f.name] = slice(start, start + p.shape[1])
            start += p.shape[1]
        table = np.concatenate([p.reindex(seeds).to_numpy(float) for p in parts], axis=1)
        return table, layout, [int(s) for s in seeds]

    def of_means(self, means: np.ndarray, layout: Mapping[str, slice]) -> np.ndarray:
        """The statistic of column means of shape (..., k)."""
        return np.asarray(self.combine({name: means[..., s] for name, s in layout.items()}))

    def value(self, frame: pd.DataFrame) -> float:
        """The point estimate on `frame` (all seeds)."""
        table, layout, _ = self.table(frame)
        with np.errstate(all="ignore"):
            return float(self.of_means(table.mean(axis=0), layout))


def _scalar(m: np.ndarray) -> np.ndarray:
    return m[..., 0]


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and R² of y (..., n) against x (n,), vectorized over leading axes."""
    xc = x - x.mean()
    yc = y - y.mean(axis=-1, keepdims=True)
    slope = (yc * xc).sum(axis=-1) / (xc * xc).sum()
    resid = yc - slope[..., None] * xc
    r2 = 1.0 - (resid * resid).sum(axis=-1) / (yc * yc).sum(axis=-1)
    return slope, r2


def value(a: Feature, description: str) -> Statistic:
    """The seed mean of one scalar feature."""
    return Statistic("value", description, (a,), lambda m: _scalar(m[a.name]))


def ratio(a: Feature, b: Feature, description: str) -> Statistic:
    """mean(a) / mean(b) (ratio of seed means, as the calibration computed it)."""
    return Statistic("ratio", description, (a, b), lambda m: _scalar(m[a.name]) / _scalar(m[b.name]))


def difference(a: Feature, b: Feature, description: str) -> Statistic:
    """mean(a) − mean(b)."""
    return Statistic("difference", description, (a, b), lambda m: _scalar(m[a.name]) - _scalar(m[b.name]))


def profile_slope(a: Feature, description: str, *, log: bool = True) -> Statistic:
    """Least-squares slope of the seed-mean profile (ln of it when `log`) against the layer index."""
    if a.layer != "all":
        raise ValueError(f"profile_slope needs a feature with layer='all', got layer={a.layer!r}")

    def combine(m):
        y = np.log(m[a.name]) if log else m[a.name]
        return _fit(np.arange(y.shape[-1], dtype=float), y)[0]

    return Statistic("profile_slope", description, (a,), combine)


def profile_r2(a: Feature, description: str) -> Statistic:
    """R² of a straight-line fit of the seed-mean profile against the layer index."""
    if a.layer != "all":
        raise ValueError(f"profile_r2 needs a feature with layer='all', got layer={a.layer!r}")
    return Statistic(
        "profile_r2", description, (a,), lambda m: _fit(np.arange(m[a.name].shape[-1], dtype=float), m[a.name])[1]
    )


def depth_slope(points: Mapping[int, Feature], description: str) -> Statistic:
    """Log-log least-squares slope of the seed mean against depth: d ln mean / d ln L."""
    if len(points) < 2:
        raise ValueError(f"depth_slope needs at least two depths, got {sorted(points)}")
    depths = sorted(points)
    x = np.log(np.asarray(depths, dtype=float))

    def combine(m):
        y = np.log(np.stack([_scalar(m[points[d].name]) for d in depths], axis=-1))
        return _fit(x, y)[0]

    return Statistic("depth_slope", description, tuple(points[d] for d in depths), combine)


def extreme(features: tuple[Feature, ...], how: str, description: str) -> Statistic:
    """The largest (how="max") or smallest ("min") seed mean among scalar features."""
    if how not in ("max", "min"):
        raise ValueError(f"extreme: how must be 'max' or 'min', got {how!r}")
    reduce = np.max if how == "max" else np.min
    return Statistic(
        how, description, features, lambda m: reduce(np.stack([_scalar(m[f.name]) for f in features], -1), -1)
    )


def extreme_ratio(pairs: tuple[tuple[Feature, Feature], ...], how: str, description: str) -> Statistic:
    """The largest or smallest of several ratios of seed means, mean(a_i)/mean(b_i)."""
    if how not in ("max", "min"):
        raise ValueError(f"extreme_ratio: how must be 'max' or 'min', got {how!r}")
    reduce = np.max if how == "max" else np.min
    features = tuple(f for pair in pairs for f in pair)

    def combine(m):
        return reduce(np.stack([_scalar(m[a.name]) / _scalar(m[b.name]) for a, b in pairs], -1), -1)

    return Statistic(f"{how}_ratio", description, features, combine)


def closer_to_one(a: tuple[Feature, Feature], b: tuple[Feature, Feature], description: str) -> Statistic:
    """|ln r_b| − |ln r_a| with r = mean(numerator)/mean(denominator): positive when ratio a is closer
    to 1 (on a log scale) than ratio b."""
    (an, ad), (bn, bd) = a, b

    def combine(m):
        ra = _scalar(m[an.name]) / _scalar(m[ad.name])
        rb = _scalar(m[bn.name]) / _scalar(m[bd.name])
        return np.abs(np.log(rb)) - np.abs(np.log(ra))

    return Statistic("closer_to_one", description, (an, ad, bn, bd), combine)


def max_abs_difference(a: Feature, b: Feature, description: str) -> Statistic:
    """max over entries of |mean(a) − mean(b)| for two profiles (an identity holds when it is ~0)."""
    return Statistic(
        "max_abs_difference", description, (a, b), lambda m: np.max(np.abs(m[a.name] - m[b.name]), axis=-1)
    )


def custom(kind: str, description: str, features: tuple[Feature, ...], combine: Combine) -> Statistic:
    """Any other function of seed means (a notebook's own statistic)."""
    return Statistic(kind, description, features, combine)


# ---------------------------------------------------------------------------------------------
# Pre-registration: calibration seeds, the statistic measured there, the rule that set the threshold.
# ---------------------------------------------------------------------------------------------
def _two_digits(x: float) -> float:
    return float(f"{x:.2g}")


@dataclass(frozen=True)
class ThresholdRule:
    """How a calibration value v and a margin m > 1 give a threshold (rounded to 2 significant digits).

    Attributes:
        name: registry key.
        description: the rule in symbols.
        apply: (v, m) -> threshold (a number, or (low, high) for direction "in").
    """

    name: str
    description: str
    apply: Callable[[float, float], float | tuple[float, float]] = field(repr=False, compare=False)


def _log_band(v: float, m: float) -> tuple[float, float]:
    half = m * abs(math.log(v))
    return _two_digits(math.exp(-half)), _two_digits(math.exp(half))


THRESHOLD_RULES: dict[str, ThresholdRule] = {
    # ">=" on a positive value: a bound m times below what the calibration measured; "<=" on a
    # negative value: m times closer to 0 (the claim's side keeps a margin of m).
    "fraction": ThresholdRule("fraction", "v / m", lambda v, m: _two_digits(v / m)),
    # "<=" on a positive value: a bound m times above what the calibration measured.
    "multiple": ThresholdRule("multiple", "v × m", lambda v, m: _two_digits(v * m)),
    # "in" around 1 for a ratio: the calibration's distance from 1 on a log scale, times m, both ways.
    "log_band": ThresholdRule("log_band", "[exp(−m·|ln v|), exp(m·|ln v|)]", _log_band),
}


@dataclass(frozen=True)
class Calibration:
    """Where a claim's threshold came from: its statistic measured on calibration seeds, then a rule.

    Attributes:
        seeds: the calibration run's seeds.
        held_out_seeds: the seeds the check reads at `preset` (disjoint from `seeds`).
        preset: the preset whose sizes both runs use.
        value: the statistic on the calibration seeds (seed means of all of them).
        interval: its 95% bootstrap interval there (as `check` computes it).
        rule: key of THRESHOLD_RULES.
        margin: m of the rule (> 1).
        held_out_result: the check's verdict and statistic on the held-out seeds, recorded after the
            threshold was committed (empty until then).
    """

    seeds: tuple[int, ...]
    held_out_seeds: tuple[int, ...]
    preset: str
    value: float
    interval: tuple[float, float]
    rule: str
    margin: float
    held_out_result: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "held_out_seeds", tuple(self.held_out_seeds))
        if self.rule not in THRESHOLD_RULES:
            raise ValueError(f"calibration: unknown rule {self.rule!r}; valid: {', '.join(THRESHOLD_RULES)}")
        if not self.margin > 1:
            raise ValueError(f"calibration: the margin must be > 1, got {self.margin!r}")
        shared = sorted(set(self.seeds) & set(self.held_out_seeds))
        if shared or not self.seeds:
            raise ValueError(
                f"calibration seeds {self.seeds} must be given and disjoint from the held-out seeds "
                f"{self.held_out_seeds} (shared: {shared})"
            )

    def threshold(self) -> float | tuple[float, float]:
        """The threshold the rule gives."""
        return THRESHOLD_RULES[self.rule].apply(self.value, self.margin)

    def seeds_text(self) -> str:
        return seed_span(self.seeds)

    def describe(self) -> str:
        """One line: seeds, value, interval and rule."""
        low, high = self.interval
        return (
            f"calibration seeds {seed_span(self.seeds)} ({self.preset} preset): v = {self.value:.3g} "
            f"[{low:.3g}, {high:.3g}]; threshold = {THRESHOLD_RULES[self.rule].description} with m = "
            f"{self.margin:g}, 2 significant digits; checked on held-out seeds {seed_span(self.held_out_seeds)}"
        )


def seed_span(seeds: tuple[int, ...]) -> str:
    """Seeds as text: "0-7" for a contiguous run, else the list."""
    s = sorted(seeds)
    if s and s == list(range(s[0], s[-1] + 1)) and len(s) > 1:
        return f"{s[0]}-{s[-1]}"
    return ", ".join(map(str, s))


@dataclass(frozen=True)
class Superseded:
    """A claim replaced by a restatement, kept visible so nothing changes silently.

    Attributes:
        id: the old claim id (no longer checked).
        statement: its statement.
        why: why it was replaced (what the paper states that the old check did not test).
        old_verdict: its last verdict at the quick preset (one of VERDICTS).
        old_statistic: its last statistic, interval and threshold, in words.
        replaced_by: the ids of the claims that replace it.
    """

    id: str
    statement: str
    why: str
    old_verdict: str
    old_statistic: str
    replaced_by: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "replaced_by", tuple(self.replaced_by))
        if self.paper not in PAPERS:
            raise ValueError(f"superseded claim {self.id!r}: unknown paper; valid: {', '.join(PAPERS)}")
        if self.old_verdict not in VERDICTS:
            raise ValueError(f"superseded claim {self.id!r}: verdict must be one of {VERDICTS}")
        if not self.replaced_by:
            raise ValueError(f"superseded claim {self.id!r}: name the claims that replace it")

    @property
    def paper(self) -> str:
        return self.id.split(".", 1)[0]

    def line(self) -> str:
        """One line: superseded by which, why, and its last verdict."""
        return (
            f"{self.id} is superseded by {', '.join(self.replaced_by)}: {self.why} "
            f"(its last verdict: {self.old_verdict}, {self.old_statistic})"
        )

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


# ---------------------------------------------------------------------------------------------
# Claims and checks.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """A paper's claim as data (see the module docstring).

    Attributes:
        id: "<paper>.<name>", unique.
        paper: key of PAPERS.
        source: the paper's figure/table/theorem it comes from.
        statement: the claim in words.
        method_form: which form of the method it tests (B2T with/without the code's L^-1/2 rescale,
            the encoder's placement in an encoder-decoder, Admin profiled or constant, learning rate).
        experiment: key in analysis.experiments.EXPERIMENTS whose frame it reads.
        statistic: the named statistic.
        threshold: a number, or (low, high) for direction "in".
        direction: ">=", "<=" or "in".
        threshold_note: where the threshold comes from, and whether it changed after seeing our numbers.
        needs: the experiment's parts the statistic reads (empty: every part).
        when: "init" or "training".
        paper_setting: the paper's model, data and moment the claim comes from (short).
        our_setting: what the check measures instead (short; sizes of the quick preset).
        calibration: where the threshold came from, when a calibration run set it (None: the note says).
        citation: the citation of a paper outside PAPERS (a claims file's own paper); "" for PAPERS' keys.
    """

    id: str
    paper: str
    source: str
    statement: str
    method_form: str
    experiment: str
    statistic: Statistic
    threshold: float | tuple[float, float]
    direction: str
    threshold_note: str
    needs: tuple[str, ...] = ()
    when: str = "init"
    paper_setting: str = ""
    our_setting: str = ""
    calibration: Calibration | None = None
    citation: str = ""

    def __post_init__(self) -> None:
        if self.paper not in PAPERS and not self.citation:
            raise ValueError(f"claim {self.id!r}: unknown paper {self.paper!r}; valid: {', '.join(PAPERS)}")
        if not self.id.startswith(f"{self.paper}.") or len(self.id) <= len(self.paper) + 1:
            raise ValueError(f"claim id {self.id!r} must be '{self.paper}.<name>'")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"claim {self.id!r}: unknown direction {self.direction!r}; valid: {', '.join(DIRECTIONS)}")
        if self.when not in WHEN:
            raise ValueError(f"claim {self.id!r}: when must be one of {WHEN}, got {self.when!r}")
        if self.direction == "in":
            ok = (
                isinstance(self.threshold, tuple) and len(self.threshold) == 2 and self.threshold[0] < self.threshold[1]
            )
            if not ok:
                raise ValueError(
                    f"claim {self.id!r}: direction 'in' needs threshold (low, high) with low < high, "
                    f"got {self.threshold!r}"
                )
        elif not (
            isinstance(self.threshold, (int, float))
            and not isinstance(self.threshold, bool)
            and math.isfinite(self.threshold)
        ):
            raise ValueError(
                f"claim {self.id!r}: direction {self.direction!r} needs a finite number threshold, "
                f"got {self.threshold!r}"
            )
        object.__setattr__(self, "needs", tuple(self.needs))
        cal = self.calibration
        if cal is not None:
            if cal.threshold() != self.threshold:
                raise ValueError(
                    f"claim {self.id!r}: threshold {self.threshold!r} is not its calibration rule's "
                    f"{cal.threshold()!r} ({cal.describe()})"
                )
            if verdict(cal.value, cal.value, self.threshold, self.direction) != "reproduced":
                raise ValueError(f"claim {self.id!r}: the calibration value {cal.value:g} fails its own threshold")

    def threshold_text(self) -> str:
        if self.direction == "in":
            return f"in [{self.threshold[0]:g}, {self.threshold[1]:g}]"
        return f"{self.direction} {self.threshold:g}"


@dataclass(frozen=True)
class CheckResult:
    """The outcome of checking one claim on one frame."""

    id: str
    paper: str
    source: str
    statement: str
    method_form: str
    statistic: float  # point estimate on all seeds
    ci_low: float
    ci_high: float
    threshold: float | tuple[float, float]
    direction: str
    verdict: str
    n_seeds: int
    note: str
    experiment: str = ""
    statistic_description: str = ""
    when: str = "init"
    paper_setting: str = ""
    our_setting: str = ""
    seeds: tuple[int, ...] = ()  # the seeds the check read
    calibration_seeds: tuple[int, ...] = ()  # empty: no calibration record
    calibration_value: float = math.nan
    threshold_rule: str = ""  # Calibration.describe(), or empty

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (see `json_safe`)."""
        return json_safe({k: getattr(self, k) for k in self.__dataclass_fields__})


def json_safe(row: Mapping[str, Any]) -> dict[str, Any]:
    """A check row for JSON: NaN -> null, ±inf -> "inf"/"-inf" (JSON has neither), an interval
    threshold -> [low, high], numpy scalars -> Python numbers."""

    def num(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [num(x) for x in v]
        if isinstance(v, (float, np.floating)):
            v = float(v)
            return None if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else v)
        if isinstance(v, np.integer):
            return int(v)
        return v

    return {k: num(v) for k, v in row.items()}


def verdict(low: float, high: float, threshold: float | tuple[float, float], direction: str) -> str:
    """The verdict rule (module docstring) for an interval [low, high]."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(DIRECTIONS)}")
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if direction == ">=":
        return "reproduced" if low >= threshold else "not reproduced" if high < threshold else "inconclusive"
    if direction == "<=":
        return "reproduced" if high <= threshold else "not reproduced" if low > threshold else "inconclusive"
    lo, hi = threshold
    if lo <= low and high <= hi:
        return "reproduced"
    return "not reproduced" if high < lo or low > hi else "inconclusive"


def check(claim: Claim, frame: pd.DataFrame, *, n_boot: int = N_BOOT, seed: int = 0) -> CheckResult:
    """Evaluate `claim` on `frame` (its experiment's tidy frame): statistic, bootstrap CI, verdict.

    Raises ValueError when the frame lacks the rows the statistic reads (a wrong frame is an error,
    not a verdict). Non-finite per-seed values are kept and named in the note.
    """
    stat = claim.statistic
    table, layout, seeds = stat.table(frame)
    point, low, high = bootstrap_ci(table, lambda m: stat.of_means(m, layout), n_boot=n_boot, seed=seed)
    notes = []
    bad = ~np.isfinite(table)
    if bad.any():
        names = [name for name, s in layout.items() if bad[:, s].any()]
        bad_seeds = [seeds[i] for i in np.flatnonzero(bad.any(axis=1))]
        notes.append(f"non-finite per-seed values in {names} (seeds {bad_seeds})")
    cal = claim.calibration
    reused = sorted(set(seeds) & set(cal.seeds)) if cal is not None else []
    if reused:
        notes.append(f"reads calibration seeds {reused}: not a held-out check")
    if len(seeds) < 2:
        result = "inconclusive"
        notes.append(f"{len(seeds)} seed: no interval")
    else:
        result = verdict(low, high, claim.threshold, claim.direction)
        if math.isnan(low):
            notes.append("interval undefined (NaN in the bootstrap distribution)")
    return CheckResult(
        id=claim.id,
        paper=claim.paper,
        source=claim.source,
        statement=claim.statement,
        method_form=claim.method_form,
        statistic=point,
        ci_low=low,
        ci_high=high,
        threshold=claim.threshold,
        direction=claim.direction,
        verdict=result,
        n_seeds=len(seeds),
        note="; ".join(notes),
        experiment=claim.experiment,
        statistic_description=stat.description,
        when=claim.when,
        paper_setting=claim.paper_setting,
        our_setting=claim.our_setting,
        seeds=tuple(seeds),
        calibration_seeds=() if cal is None else cal.seeds,
        calibration_value=math.nan if cal is None else cal.value,
        threshold_rule="" if cal is None else cal.describe(),
    )
