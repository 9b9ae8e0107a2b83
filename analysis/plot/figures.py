"""Figures over the tidy result frame: layer profiles, CKA heatmaps, depth scaling.

Every plot takes the tidy long DataFrame (one row per observation, columns ``run, arch, placement,
norm, layers, d_model, seed, step, stack, layer, site, quantity, value, other_layer``) and an
``Axes``, draws on it and returns it. Plots only select, aggregate over seeds and draw; they never
compute probes and never import ``models`` (cockpit's compute/draw split). Each states the columns it
needs and raises ``ValueError`` naming the missing columns, or the empty selection together with the
values that were available.

The seed spread is always drawn. The project's one convention (atlas, experiments, report) is the
seed mean with its 95% Student-t interval: ``band="auto"`` picks ``"logci"`` on a log axis and
``"ci"`` on a linear one. The other bands stay for exploration:
    - ``"minmax"``: the line is the median over seeds and the band min..max over seeds;
    - ``"iqr"``: the median and the 25th..75th percentile over seeds;
    - ``"ci"``: the line is the mean and the band mean +- t_{0.975, n-1} s / sqrt(n), the two-sided
      95% Student-t interval (no band where n < 2);
    - ``"logci"``: the same on ln(value), mapped back: the geometric mean and its interval (for
      positive values drawn on a log axis, where a linear interval would cross zero).

Scales: a log axis only where the values span decades (``spans_decades``: all positive, the largest
over ten times the smallest), the rule of every ``logy=None``; a log axis is labelled in plain numbers
while few decades are in view (``log_axis``, ``PlainLogFormatter``: 0.5, 1, 2 rather than 5×10⁻¹,
10⁰, 2×10⁰), so an explicit ``logy=True`` over a narrow range stays readable.

Readability at the report's page width: every text is at least ``FONT_MIN_PT`` points, and lines
whose seed means coincide (within 1% of the axis' span at every x) say so in the legend (``sandwich (≡ peri)``)
instead of hiding behind each other. Y labels are plain language (``quantity_label``); the code
names (quantity, site) belong in the caption.

Selection: ``step=None`` takes each run's final recorded step, and ``where={column: value or list}``
narrows further (e.g. ``{"layers": 18}``). A selection that still holds several rows per plotted key
(say two depths mixed in one profile) is refused with the columns that differ, never averaged.

Colors: every placement has one fixed color and marker (``PLACEMENT_COLORS``, ``PLACEMENT_MARKERS``)
in every figure of the project. With hue ``variant`` (a placement in one form of its method, the
experiments' column) each line takes its placement's color, and forms of the same placement differ
by line style. Any other hue (a site, a norm), and variants that all stand for one placement, get
colors of a separate palette in the order they first appear in the *whole* frame, so a value keeps
its color in every panel drawn from one frame.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FixedLocator,
    Formatter,
    LogFormatterSciNotation,
    MaxNLocator,
    NullLocator,
    ScalarFormatter,
)
from matplotlib.transforms import ScaledTranslation

from analysis.plot.styles import PLACEMENT_COLORS, PLACEMENT_MARKERS
from analysis.plot.styles import styles as _styles
from analysis.stats import t_quantile

__all__ = [
    "PLACEMENT_COLORS",
    "PLACEMENT_MARKERS",
    "plot_layer_profile",
    "plot_cka_heatmap",
    "plot_depth_scaling",
    "plot_lines",
    "figure_grid",
    "save_figure",
    "quantity_label",
    "legend_below",
    "spans_decades",
    "log_axis",
    "PlainLogFormatter",
    "FONT_MIN_PT",
    "PAGE_WIDTH_IN",
]

Band = Literal["auto", "minmax", "iqr", "ci", "logci"]
DPI = 130
FONT_MIN_PT = 9  # the smallest text on any figure; the report shows figures at their physical size
_LEGEND_INSIDE_MAX = 5  # more lines than this draw their bands lighter
_LEGEND_DROP_IN = 0.42  # legend's top below the axes: the tick labels and the x label (9-10 pt) above it
_LEGEND_CHAR_IN, _LEGEND_HANDLE_IN = 0.075, 0.5  # a 9-pt character's width, and a handle with its padding
_LEGEND_LINE_IN = 0.2  # one line of a 9-pt legend
DECADE = 10.0  # a log axis is drawn for values whose largest is more than this times the smallest
PLAIN_LOG_DECADES = 2.0  # a log axis spanning up to this many decades is labelled in plain numbers
PAGE_WIDTH_IN = 11.5  # the report's column (1132 CSS px at 96 per inch) less a margin: no figure is wider
_COINCIDE_FRACTION = 0.01  # seed means this close (of the axis' span) at every x are one line to the eye
_BAND_TEXT = {
    "auto": "mean, 95% CI",
    "minmax": "median, min–max",
    "iqr": "median, IQR",
    "ci": "mean ± 95% CI",
    "logci": "geometric mean, 95% CI",
}
# Columns that tell configurations apart; named when a selection holds several rows per key.
_CONFIG_COLUMNS = ("run", "arch", "placement", "norm", "layers", "d_model", "step", "site", "other_layer")


class _AtLeast:
    """Filter value meaning ``column >= bound`` (reads as ``layer>=0`` in error messages)."""

    def __init__(self, bound: int) -> None:
        self.bound = bound


def _fmt(filters: Mapping[str, Any]) -> str:
    return ", ".join(f"{c}>={v.bound}" if isinstance(v, _AtLeast) else f"{c}={v!r}" for c, v in filters.items())


def _require(df: pd.DataFrame, columns: Sequence[str], who: str) -> None:
    missing = [c for c in dict.fromkeys(columns) if c not in df.columns]
    if missing:
        raise ValueError(f"{who} needs columns {missing}, missing from the frame (it has {list(df.columns)})")


def _select(df: pd.DataFrame, filters: Mapping[str, Any]) -> pd.DataFrame:
    """Rows matching every filter: a scalar means equality, a list/tuple/set membership.

    Filters apply in order; the first one that empties the selection is reported with the values its
    column takes among the rows that passed the earlier filters.
    """
    mask = np.ones(len(df), dtype=bool)
    for col, want in filters.items():
        if col not in df.columns:
            raise ValueError(f"cannot filter on column {col!r}: the frame has {list(df.columns)}")
        values = df[col]
        if isinstance(want, _AtLeast):
            hit = (values >= want.bound).to_numpy()
        elif isinstance(want, (list, tuple, set, frozenset)):
            hit = values.isin(list(want)).to_numpy()
        else:
            hit = (values == want).to_numpy()
        if not (mask & hit).any():
            available = sorted(pd.unique(values[mask]).tolist(), key=str)
            raise ValueError(f"no rows with {_fmt(filters)}; available {col} values: {available}")
        mask &= hit
    return df[mask]


def _at_step(sel: pd.DataFrame, step: int | None) -> pd.DataFrame:
    """Rows at ``step``, or at each run's final recorded step when ``step`` is None."""
    if step is None:
        return sel[sel["step"] == sel.groupby("run")["step"].transform("max")]
    return _select(sel, {"step": step})


def _check_unique(sel: pd.DataFrame, keys: Sequence[str], who: str) -> None:
    """One observation per key, else name the configuration columns that differ."""
    dup = sel.duplicated(list(keys), keep=False)
    if dup.any():
        groups = sel[dup].groupby(list(keys))
        varying = [c for c in _CONFIG_COLUMNS if c in sel.columns and c not in keys and groups[c].nunique().max() > 1]
        raise ValueError(
            f"{who}: several rows per {tuple(keys)}; they differ in {varying}. Pick one with where={{column: value}}"
        )


def _check_band(band: str) -> None:
    if band not in _BAND_TEXT:
        raise ValueError(f"band={band!r}; expected one of {list(_BAND_TEXT)}")


def _resolve_band(band: Band, log: bool) -> Band:
    """``"auto"``: the geometric mean's interval on a log axis, the mean's on a linear one."""
    return ("logci" if log else "ci") if band == "auto" else band


# Plain-language names of the probes' quantities, for axis labels (the code name goes in the caption).
QUANTITY_LABELS = {
    "act_grad_norm": "‖∂ℒ/∂x‖",
    "param_grad_norm": "‖∂ℒ/∂W‖",
    "act_norm": "RMS of x (per token)",
    "ln_jacobian_gain": "‖J_LNᵀ g‖ / ‖g‖",
    "cos_adjacent": "cos(x_l, x_l+1)",
    "cka": "CKA",
    "cka_null": "CKA (null)",
    "loss": "training loss",
    "val_loss": "validation loss",
    "grad_norm": "‖∂ℒ/∂θ‖",
}
_SITE_LABELS = {
    "resid_pre": "layer input",
    "resid_post": "layer output",
    "mlp.w2.weight": "FFN output weight W₂",
    "mlp.w1.weight": "FFN input weight W₁",
    "mlp": "FFN",
    "attn": "attention",
    "mlp_ln": "FFN's norm",
    "attn_ln": "attention's norm",
}


def quantity_label(quantity: str, site: str | None = None) -> str:
    """A plain-language axis label for a probe quantity at a site, e.g. ``"‖∂ℒ/∂W‖ (FFN output weight
    W₂)"`` for ``("param_grad_norm", "mlp.w2.weight")``. ``update_ratio`` has two meanings, told apart
    by the site: a sublayer's output over its input stream, ‖F(x)‖/‖x‖ (a probe), or the optimizer
    step over the weights, ‖Δθ‖/‖θ‖ (a training curve, site "model" or none). Unknown names are
    returned as they are."""
    if quantity == "update_ratio":
        if site in (None, "", "model"):
            return "‖Δθ‖/‖θ‖ (optimizer step over weights)"
        return f"‖F(x)‖/‖x‖ ({_SITE_LABELS.get(site, site)} output over its input)"
    name = QUANTITY_LABELS.get(quantity, quantity)
    return f"{name} ({_SITE_LABELS.get(site, site)})" if site else name


def _coincident(curves: Mapping[Any, tuple[np.ndarray, np.ndarray]], log: bool) -> dict[Any, Any]:
    """{hue: earlier hue} for every line that the eye cannot tell from an earlier one: seed means
    within ``_COINCIDE_FRACTION`` of the y axis' span (in log10 on a log axis) at every x, at the same
    x values. Lines without a finite point are skipped."""

    def scaled(y: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(np.where(y > 0, y, np.nan)) if log else y

    ys = [scaled(y) for _, y in curves.values()]
    finite_all = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.array([])
    if finite_all.size == 0:
        return {}
    tolerance = _COINCIDE_FRACTION * max(float(np.ptp(finite_all)), 1e-12)
    out: dict[Any, Any] = {}
    seen: list[Any] = []
    for h, (x, y) in curves.items():
        y = scaled(y)
        finite = np.isfinite(y)
        for other in seen:
            ox, oy = curves[other][0], scaled(curves[other][1])
            if finite.any() and len(ox) == len(x) and np.array_equal(ox, x) and np.array_equal(np.isfinite(oy), finite):
                if np.max(np.abs(y[finite] - oy[finite])) <= tolerance:
                    out[h] = other
                    break
        if h not in out:
            seen.append(h)
    return out


def _label(h: Any, same: Mapping[Any, Any]) -> str:
    return f"{h} (≡ {same[h]})" if h in same else str(h)


def _readable(ax: Axes) -> None:
    """Tick labels at ``FONT_MIN_PT`` (matplotlib's default is smaller once a figure is scaled)."""
    ax.tick_params(labelsize=FONT_MIN_PT)


def _seed_stats(sel: pd.DataFrame, by: list[str], band: Band) -> pd.DataFrame:
    """Columns ``by + [center, lo, hi, n]``: the line and band over seeds for each group.

    A group with any non-finite seed value (a diverged run) gets NaN everywhere, so the line shows a
    gap there instead of quietly summarising the remaining seeds (see ``_note_nonfinite``).
    """
    g = sel.groupby(by, sort=True)["value"]
    n = g.size()
    if band == "minmax":
        center, lo, hi = g.median(), g.min(), g.max()
    elif band == "iqr":
        center, lo, hi = g.median(), g.quantile(0.25), g.quantile(0.75)
    else:
        t = n.map(lambda k: t_quantile(0.975, int(k) - 1) if k > 1 else np.nan)
        if band == "logci":  # the t interval of the mean of ln(value), mapped back: positive, log-symmetric
            with np.errstate(divide="ignore", invalid="ignore"):
                g = sel.assign(value=np.log(sel["value"].where(sel["value"] > 0))).groupby(by, sort=True)["value"]
        center = g.mean()
        half = t * g.std(ddof=1) / np.sqrt(n)
        lo, hi = center - half, center + half
        if band == "logci":
            center, lo, hi = np.exp(center), np.exp(lo), np.exp(hi)
    out = pd.DataFrame({"center": center, "lo": lo, "hi": hi, "n": n})
    diverged = ~sel.assign(finite=np.isfinite(sel["value"].to_numpy(float))).groupby(by, sort=True)["finite"].all()
    out.loc[diverged, ["center", "lo", "hi"]] = np.nan
    return out.reset_index()


def _note_nonfinite(ax: Axes, sel: pd.DataFrame) -> None:
    """Say on the axes how many values are NaN/Inf and in which seeds: they are not drawn."""
    bad = sel[~np.isfinite(sel["value"].to_numpy(float))]
    if bad.empty:
        return
    seeds = sorted(int(s) for s in pd.unique(bad["seed"]))
    ax.text(
        0.01,
        0.01,
        f"{len(bad)} non-finite value(s), seed(s) {seeds}: not drawn (gaps)",
        transform=ax.transAxes,
        fontsize=FONT_MIN_PT,
        color="crimson",
        va="bottom",
        ha="left",
    )


def spans_decades(values: Any) -> bool:
    """The project's rule for a log axis: every finite value positive and the largest more than
    ``DECADE`` times the smallest. Values within a decade read better on a linear axis (on a log
    one, with no power of ten in view, the ticks are labelled 4×10⁰, 6×10⁰).

    Args:
        values: numbers of any shape (array, Series, list); NaN and Inf are left out.
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v)]
    return bool(v.size) and bool((v > 0).all()) and bool(v.max() / v.min() > DECADE)


class PlainLogFormatter(Formatter):
    """Tick labels of a log axis that stay plain numbers while few decades are in view (read from the
    axis when it is drawn, so shared or later-changed limits count): within one decade every tick
    (0.5, 0.6, 0.7); up to ``PLAIN_LOG_DECADES`` the powers of ten and the 2s and 5s between them
    (0.2, 0.5, 1, 2); over more, the powers of ten alone in matplotlib's 10ⁿ.

    Args:
        minor: format the minor ticks (unlabelled beyond one decade but for the 2s and 5s).
    """

    def __init__(self, minor: bool = False) -> None:
        self.minor = minor
        self._powers = LogFormatterSciNotation()  # over many decades: matplotlib's own 10ⁿ

    def set_axis(self, axis: Any) -> None:
        super().set_axis(axis)
        self._powers.set_axis(axis)

    def set_locs(self, locs: Any) -> None:
        super().set_locs(locs)
        self._powers.set_locs(locs)

    def __call__(self, x: float, pos: int | None = None) -> str:
        low, high = sorted(self.axis.get_view_interval()) if self.axis is not None else (x, x)
        decades = math.log10(high / low) if low > 0 else math.inf
        if decades > PLAIN_LOG_DECADES:
            return "" if self.minor else self._powers(x, pos)
        if x <= 0:
            return ""
        lead = round(x / 10 ** math.floor(math.log10(x) + 1e-9))
        if self.minor and decades > 1 and lead not in (2, 5):
            return ""
        return f"{x:.3g}"


def log_axis(axis: Any) -> None:
    """Put one axis (``ax.xaxis`` or ``ax.yaxis``) on a log scale labelled by ``PlainLogFormatter``."""
    getattr(axis.axes, f"set_{axis.axis_name}scale")("log")
    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(PlainLogFormatter(minor=True))


def legend_below(
    ax: Axes,
    title: str,
    handles: Sequence | None = None,
    labels: Sequence[str] | None = None,
    ncols: int | None = None,
) -> None:
    """The axes' legend under it, off the data (a legend inside the axes covered lines in several
    panels), in ``ncols`` columns (default: up to three, as many as fit the panel's width); placed a
    fixed distance in inches below the axes so it clears the tick labels and the x label whatever the
    panel's height. The figure grows by the legend's height (``_grow_for_legend``)."""
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    below = ax.transAxes + ScaledTranslation(0.0, -_LEGEND_DROP_IN, ax.figure.dpi_scale_trans)
    if ncols is None:  # as many columns (up to three) as fit the panel's width, so legends never overlap
        width = ax.get_position().width * ax.figure.get_figwidth()
        entry = _LEGEND_CHAR_IN * max((len(str(label)) for label in labels), default=1) + _LEGEND_HANDLE_IN
        ncols = max(1, min(3, len(labels), int(width // entry)))
    _grow_for_legend(ax, math.ceil(len(labels) / ncols) + title.count("\n") + 1)
    ax.legend(
        handles,
        labels,
        title=title,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=below,
        ncols=ncols,
        fontsize=FONT_MIN_PT,
        title_fontsize=FONT_MIN_PT,
        handlelength=1.8,
        columnspacing=1.0,
        frameon=False,
    )


def _grow_for_legend(ax: Axes, lines: int) -> None:
    """Make the figure taller by the legend's height under this row of panels (the tallest legend of
    the row counts once), so the panels keep the height they were drawn for."""
    spec = ax.get_subplotspec()
    row = spec.rowspan.start if spec is not None else 0
    grown = ax.figure.__dict__.setdefault("_lnscope_legend_in", {})
    need = _LEGEND_DROP_IN + lines * _LEGEND_LINE_IN
    if need > grown.get(row, 0.0):
        ax.figure.set_figheight(ax.figure.get_figheight() + need - grown.get(row, 0.0))
        grown[row] = need


def _legend(ax: Axes, title: str, n: int) -> None:
    legend_below(ax, title)


def _step_text(sel: pd.DataFrame) -> str:
    steps = pd.unique(sel["step"])
    return f"step {steps[0]}" if len(steps) == 1 else "final step"


def plot_layer_profile(
    df: pd.DataFrame,
    ax: Axes,
    *,
    quantity: str,
    site: str,
    stack: str,
    hue: str = "placement",
    logy: bool | None = None,
    band: Band = "auto",
    step: int | None = None,
    where: Mapping[str, Any] | None = None,
    ylabel: str | None = None,
    legend: bool = True,
) -> Axes:
    """Per-layer profile of one quantity at one site: one line per ``hue`` value, seed spread shaded.

    Needs columns ``quantity, stack, site, layer, seed, step, run, value`` and ``hue``. Rows with
    ``layer < 0`` (embedding / head) are left out.

    Args:
        df: tidy result frame.
        ax: axes to draw on.
        quantity: e.g. ``"act_grad_norm"``.
        site: e.g. ``"resid_pre"``.
        stack: ``"encoder"`` or ``"decoder"``.
        hue: column giving one line per value.
        logy: log y axis; None = automatic (``spans_decades``: log when the positive values span more
            than a decade, never when any value is < 0); a log axis over few decades is labelled in
            plain numbers (``log_axis``). A line that is exactly 0 at every layer (ReZero's gradients at
            init) cannot sit on a log axis: it is named in the legend as "≡ 0" instead of drawn.
        band: seed spread, ``"auto"`` (the project's convention: mean and 95% t interval, geometric on a
            log axis), ``"ci"``, ``"logci"``, ``"minmax"`` or ``"iqr"`` (see the module docstring).
        step: training step; None = each run's final recorded step.
        where: extra equality (scalar) or membership (list) filters, e.g. ``{"layers": 18}``.
        ylabel: y axis label; None = ``quantity_label(quantity, site)``.
        legend: draw the legend (under the axes); a grid of panels with the same lines may draw one
            legend for several panels instead (``legend_below``).

    Returns:
        ``ax``.

    Raises:
        ValueError: missing columns, an empty selection, or several rows per (hue, layer, seed).
    """
    who = "plot_layer_profile"
    _check_band(band)
    _require(df, ["quantity", "stack", "site", "layer", "seed", "step", "run", "value", hue], who)
    filters = {"quantity": quantity, "stack": stack, "site": site, "layer": _AtLeast(0), **(where or {})}
    sel = _at_step(_select(df, filters), step)
    _check_unique(sel, (hue, "layer", "seed"), who)
    zero = sel.groupby(hue, sort=False)["value"].agg(lambda v: bool((v == 0).all()))
    zero_hues = set(zero[zero].index)
    drawable = sel[~sel[hue].isin(zero_hues)]
    log = bool(logy) or (logy is None and not drawable.empty and spans_decades(drawable["value"]))
    band = _resolve_band(band, log)
    stats = _seed_stats(sel, [hue, "layer"], band)
    styles = _styles(df, hue)
    present = [h for h in styles if h in set(stats[hue])]
    alpha = 0.2 if len(present) <= _LEGEND_INSIDE_MAX else 0.1  # many overlapping bands: lighter
    curves = {h: tuple(stats.loc[stats[hue] == h, ["layer", "center"]].to_numpy(float).T) for h in present}
    same = _coincident({h: c for h, c in curves.items() if not (log and h in zero_hues)}, log)
    for h in present:
        x, center, lo, hi = stats.loc[stats[hue] == h, ["layer", "center", "lo", "hi"]].to_numpy(float).T
        st = styles[h]
        if log and h in zero_hues:  # nothing to draw on a log axis: a legend entry says why
            ax.plot([], [], label=f"{h} (≡ 0, not on a log axis)", gid=f"center:{h}", lw=1.4, ms=3, **st)
            continue
        ax.plot(x, center, label=_label(h, same), gid=f"center:{h}", lw=1.4, ms=3, **st)
        ax.fill_between(x, lo, hi, color=st["color"], alpha=alpha, lw=0, gid=f"band:{h}")
    if log:
        log_axis(ax.yaxis)
    _note_nonfinite(ax, sel)
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))  # "auto": fit the axis length
    ax.set_xlabel("layer (0 = bottom)")
    ax.set_ylabel(quantity_label(quantity, site) if ylabel is None else ylabel)
    ax.set_title(f"{quantity} at {site}: {stack}, {_step_text(sel)}", fontsize="medium")
    ax.grid(True, alpha=0.3, lw=0.5)
    _readable(ax)
    if legend:
        _legend(ax, f"{hue}\n{_BAND_TEXT[band]} of {sel['seed'].nunique()} seeds", len(present))
    return ax


def plot_cka_heatmap(
    df: pd.DataFrame,
    ax: Axes,
    *,
    stack: str,
    placement: str,
    quantity: str = "cka",
    site: str | None = None,
    step: int | None = None,
    where: Mapping[str, Any] | None = None,
    cmap: str = "viridis",
    colorbar: bool = True,
) -> Axes:
    """Layer-by-layer similarity matrix, averaged over seeds, as an image with a colorbar.

    Needs columns ``quantity, stack, placement, layer, other_layer, seed, step, run, value`` (and
    ``site`` when ``site`` is given). Cell (row ``layer``, column ``other_layer``) is the seed mean;
    pairs never measured are blank. The color range is fixed to [0, 1] (display clipping only, the
    image data are the unclipped means) so panels compare.

    Args:
        df: tidy result frame.
        ax: axes to draw on; the colorbar is taken from its figure.
        stack: ``"encoder"`` or ``"decoder"``.
        placement: the placement to show.
        quantity: ``"cka"`` or ``"cka_null"``.
        site: the residual site, when the frame holds several.
        step: training step; None = each run's final recorded step.
        where: extra filters, e.g. ``{"layers": 18}``.
        cmap: colormap name.
        colorbar: draw this panel's colorbar; a grid of panels passes False and draws one colorbar for
            all of them (every panel has the same [0, 1] range), from ``ax.images[0]``.

    Returns:
        ``ax``.

    Raises:
        ValueError: missing columns, an empty selection, or several rows per (layer, other_layer, seed).
    """
    who = "plot_cka_heatmap"
    _require(
        df,
        ["quantity", "stack", "placement", "layer", "other_layer", "seed", "step", "run", "value"]
        + (["site"] if site is not None else []),
        who,
    )
    filters: dict[str, Any] = {"quantity": quantity, "stack": stack, "placement": placement}
    if site is not None:
        filters["site"] = site
    filters |= {"layer": _AtLeast(0), "other_layer": _AtLeast(0), **(where or {})}
    sel = _at_step(_select(df, filters), step)
    _check_unique(sel, ("layer", "other_layer", "seed"), who)
    # a non-finite seed makes its cell blank rather than averaging over the other seeds
    mean = sel.groupby(["layer", "other_layer"])["value"].agg(lambda v: v.mean() if np.isfinite(v).all() else np.nan)
    mean = mean.unstack("other_layer")
    size = int(max(mean.index.max(), mean.columns.max())) + 1  # pixel i sits at layer i
    mat = mean.reindex(index=range(size), columns=range(size)).to_numpy(dtype=float)  # (layer, other)
    im = ax.imshow(np.ma.masked_invalid(mat), origin="lower", vmin=0.0, vmax=1.0, cmap=cmap, interpolation="nearest")
    if colorbar:
        cbar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label(quantity)  # short: in a grid a long label runs into the next panel's y label
        cbar.ax.tick_params(labelsize=FONT_MIN_PT)
    _readable(ax)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("other layer (0 = bottom)")
    ax.set_ylabel("layer (0 = bottom)")
    ax.set_title(
        f"{quantity}: {placement}, {stack}, mean of {sel['seed'].nunique()} seeds ({_step_text(sel)})",
        fontsize="medium",
    )
    _note_nonfinite(ax, sel)
    return ax


def plot_depth_scaling(
    df: pd.DataFrame,
    ax: Axes,
    *,
    quantity: str,
    site: str,
    stack: str,
    layer: Literal["last"] | int = "last",
    hue: str = "placement",
    band: Band = "auto",
    logy: bool | None = True,
    step: int | None = None,
    where: Mapping[str, Any] | None = None,
    dodge: float = 0.03,
) -> Axes:
    """Value at one layer against model depth, log-log, one line per ``hue`` value.

    Needs columns ``quantity, stack, site, layer, layers, seed, step, run, value`` and ``hue``.
    The point is the median over seeds, the error bar the seed spread (``band``).

    Args:
        df: tidy result frame.
        ax: axes to draw on.
        quantity: e.g. ``"act_grad_norm"``.
        site: e.g. ``"resid_pre"``.
        stack: ``"encoder"`` or ``"decoder"``.
        layer: ``"last"`` (layer == layers - 1), a layer index >= 0, or a negative index counted from
            the top (-1 = last).
        hue: column giving one line per value.
        band: seed spread, ``"auto"`` (mean and 95% t interval, geometric on a log axis), ``"ci"``,
            ``"logci"``, ``"minmax"`` or ``"iqr"``.
        logy: log y axis (default; plain tick labels over few decades, ``log_axis``); None = automatic
            as in ``plot_layer_profile``. Values <= 0 fall back to a linear axis with a warning.
        step: training step; None = each run's final recorded step.
        where: extra filters, e.g. ``{"norm": "rms"}``.
        dodge: relative x offset between neighbouring hue values (the group stays centred on the
            depth), so error bars do not overlap; 0 puts every point exactly at its depth.

    Returns:
        ``ax``.

    Raises:
        ValueError: missing columns, an empty selection, a bad ``layer``, or duplicate rows.
    """
    who = "plot_depth_scaling"
    _check_band(band)
    _require(df, ["quantity", "stack", "site", "layer", "layers", "seed", "step", "run", "value", hue], who)
    filters = {"quantity": quantity, "stack": stack, "site": site, **(where or {})}
    sel = _at_step(_select(df, filters), step)
    if layer == "last":
        target, desc = sel["layers"] - 1, "last layer"
    elif isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        target, desc = (sel["layers"] + layer if layer < 0 else layer), f"layer {layer}"
    else:
        raise ValueError(f"layer={layer!r}; expected 'last' or an int")
    sel = sel[sel["layer"] == target]
    if sel.empty:
        raise ValueError(f"no rows with {_fmt(filters)} at the {desc}")
    _check_unique(sel, (hue, "layers", "seed"), who)
    finite = sel["value"].to_numpy(dtype=float)
    positive = bool((finite[np.isfinite(finite)] > 0).all())
    log = bool((logy and positive) or (logy is None and spans_decades(sel["value"])))
    band = _resolve_band(band, log)
    stats = _seed_stats(sel, [hue, "layers"], band)
    styles = _styles(df, hue)
    present = [h for h in styles if h in set(stats[hue])]
    for i, h in enumerate(present):
        x, center, lo, hi = stats.loc[stats[hue] == h, ["layers", "center", "lo", "hi"]].to_numpy(float).T
        x = x * (1.0 + dodge) ** (i - (len(present) - 1) / 2)
        yerr = np.nan_to_num(np.stack([center - lo, hi - center]))  # no seed spread (n=1): no bar
        ax.errorbar(x, center, yerr=yerr, label=str(h), capsize=2.5, lw=1.2, ms=4, **styles[h])
    if logy and not positive:
        warnings.warn(f"{who}: {quantity} has values <= 0; using a linear y axis", stacklevel=2)
    if log:
        log_axis(ax.yaxis)
    _note_nonfinite(ax, sel)
    depths = sorted(pd.unique(sel["layers"]))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(depths))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("model depth (layers)")
    ax.set_ylabel(f"{quantity_label(quantity, site)}, {desc}")
    ax.set_title(f"{quantity} vs depth: {stack}, {_step_text(sel)}", fontsize="medium")
    ax.grid(True, which="both", alpha=0.3, lw=0.5)
    _readable(ax)
    _legend(ax, f"{hue}\n{_BAND_TEXT[band]} of {sel['seed'].nunique()} seeds", len(present))
    return ax


def plot_lines(
    df: pd.DataFrame,
    ax: Axes,
    *,
    x: str,
    hue: str = "variant",
    band: Band = "ci",
    where: Mapping[str, Any] | None = None,
    logx: bool = False,
    logy: bool | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    legend_title: str | None = None,
) -> Axes:
    """A value against any column ``x`` (training step, skip scale λ, depth, layer), one line per
    ``hue`` value, aggregated over seeds with the seed spread shaded.

    Needs columns ``x, hue, seed, value`` (and the ``where`` columns). The selection must hold one row
    per (hue, x, seed); a diverged seed (NaN/Inf) leaves a gap at its x (see ``_seed_stats``).

    Args:
        df: tidy frame.
        ax: axes to draw on.
        x: column on the x axis (numeric).
        hue: column giving one line per value; colors follow the placement (module docstring).
        band: ``"ci"`` (mean ± 95% t interval), ``"logci"`` (geometric mean and its interval, for
            log axes), ``"auto"`` (whichever of the two fits the axis), ``"minmax"`` or ``"iqr"``.
        where: equality (scalar) or membership (list) filters.
        logx: log x axis.
        logy: log y axis (plain tick labels over few decades, ``log_axis``); None = automatic
            (``spans_decades``: log when positive values span more than a decade).
        xlabel, ylabel, title, legend_title: text (defaults name the columns).

    Returns:
        ``ax``.

    Raises:
        ValueError: missing columns, an empty selection, or several rows per (hue, x, seed).
    """
    who = "plot_lines"
    _check_band(band)
    _require(df, [x, hue, "seed", "value", *(where or {})], who)
    sel = _select(df, where or {})
    _check_unique(sel, (hue, x, "seed"), who)
    values = sel["value"].to_numpy(dtype=float)
    log = bool(logy and (values[np.isfinite(values)] > 0).any()) or (logy is None and spans_decades(values))
    band = _resolve_band(band, log)
    stats = _seed_stats(sel, [hue, x], band)
    styles = _styles(df, hue)
    present = [h for h in styles if h in set(stats[hue])]
    alpha = 0.2 if len(present) <= _LEGEND_INSIDE_MAX else 0.1
    same = _coincident({h: tuple(stats.loc[stats[hue] == h, [x, "center"]].to_numpy(float).T) for h in present}, log)
    for h in present:
        xs, center, lo, hi = stats.loc[stats[hue] == h, [x, "center", "lo", "hi"]].to_numpy(float).T
        st = styles[h]
        ms = 3 if len(xs) > 12 else 4
        label = _label(h, same)
        ax.plot(xs, center, label=label, gid=f"center:{h}", lw=1.4, ms=ms, markevery=max(1, len(xs) // 12), **st)
        ax.fill_between(xs, lo, hi, color=st["color"], alpha=alpha, lw=0, gid=f"band:{h}")
    xs_all = np.asarray(sorted(pd.unique(sel[x])), dtype=float)
    if logx:  # ticks at the measured x values, plainly written (not 6×10⁰)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(xs_all))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    elif np.all(xs_all == np.round(xs_all)):
        ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
    if logy and not (values[np.isfinite(values)] > 0).any():
        warnings.warn(f"{who}: no positive finite values to draw on a log axis; using a linear one", stacklevel=2)
    elif log:
        log_axis(ax.yaxis)
    _note_nonfinite(ax, sel)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or "value")
    if title:
        ax.set_title(title, fontsize="medium")
    ax.grid(True, which="both", alpha=0.3, lw=0.5)
    _readable(ax)
    _legend(ax, f"{legend_title or hue}\n{_BAND_TEXT[band]} of {sel['seed'].nunique()} seeds", len(present))
    return ax


def figure_grid(
    n_panels: int, ncols: int = 3, panel_size: tuple[float, float] = (4.5, 3.2)
) -> tuple[Figure, np.ndarray]:
    """A figure with ``n_panels`` axes on a grid of ``ncols`` columns (constrained layout), no wider
    than ``PAGE_WIDTH_IN`` (the report shows figures at their physical size, so text stays at its
    point size: a wider grid gets narrower panels instead).

    Args:
        n_panels: number of axes wanted (>= 1); grid cells beyond it are removed.
        ncols: columns of the grid (fewer when ``n_panels`` is smaller).
        panel_size: (width, height) of one panel in inches; the width shrinks to fit the page.

    Returns:
        ``(fig, axes)`` with ``axes`` a flat array of length ``n_panels``, row by row.
    """
    if n_panels < 1 or ncols < 1:
        raise ValueError(f"need n_panels >= 1 and ncols >= 1, got {n_panels}, {ncols}")
    ncols = min(ncols, n_panels)
    nrows = math.ceil(n_panels / ncols)
    width = min(panel_size[0], PAGE_WIDTH_IN / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, panel_size[1] * nrows), squeeze=False, layout="constrained"
    )
    flat = axes.ravel()
    for ax in flat[n_panels:]:
        fig.delaxes(ax)
    return fig, flat[:n_panels]


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = DPI, close: bool = True) -> Path:
    """Write ``fig`` atomically and close it (unless ``close=False``, to save it in another format too).

    The image goes to a temporary file in the target directory, then ``os.replace`` moves it into
    place, so a reader never sees a half-written file. The format follows the suffix (PNG when none).

    Args:
        fig: figure to save.
        path: destination; parent directories are created.
        dpi: resolution for raster formats.
        close: close the figure afterwards.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lstrip(".").lower() or "png"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=dpi, bbox_inches="tight")
        umask = os.umask(0)  # mkstemp makes the file 0600; give it the usual permissions instead
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if close:
            plt.close(fig)
    return path
