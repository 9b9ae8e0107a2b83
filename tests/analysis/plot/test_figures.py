"""Tests for analysis.plot.figures on synthetic tidy frames with known profiles.

Every expected number is computed here independently (numpy over a pivot of the frame) and compared
with what the plot put on its axes.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import matplotlib.text
import numpy as np
import pandas as pd
import pytest

from analysis.plot.figures import (
    FONT_MIN_PT,
    PAGE_WIDTH_IN,
    figure_grid,
    log_axis,
    plot_cka_heatmap,
    plot_depth_scaling,
    plot_layer_profile,
    quantity_label,
    save_figure,
    spans_decades,
)
from analysis.stats import t_quantile

# Plotted data are float64 copies of the frame's values: only rounding can differ.
PLOT_ATOL = 1e-12
# Student-t quantiles from a printed table carry 6-7 significant digits.
T_TABLE_ATOL = 1e-5

PLACEMENTS = ("pre", "post", "peri")
SEEDS = (0, 1, 2)
STEPS = (0, 100)
# Per-placement growth rate of the exponential profile value = 0.5 * exp(rate * layer).
RATES = {"pre": -0.05, "post": -0.4, "peri": 0.0}


def _row(placement: str, layers: int, seed: int, step: int, **kw) -> dict:
    return {
        "run": f"{placement}-L{layers}-s{seed}",
        "arch": "encdec",
        "placement": placement,
        "norm": "layer",
        "layers": layers,
        "d_model": 64,
        "seed": seed,
        "step": step,
        "other_layer": -1,
        **kw,
    }


def make_frame(depths=(18,), stack="decoder", seed_noise=0.3) -> pd.DataFrame:
    """Exponential act_grad_norm profiles at resid_pre/resid_post, plus embed rows at layer -1."""
    rng = np.random.default_rng(0)
    rows = []
    for placement in PLACEMENTS:
        for layers in depths:
            for seed in SEEDS:
                for step in STEPS:
                    scale = 1.0 if step == STEPS[-1] else 7.0  # earlier steps must not be plotted
                    for layer in range(layers):
                        base = 0.5 * np.exp(RATES[placement] * layer) * scale
                        for site in ("resid_pre", "resid_post"):
                            value = base * np.exp(seed_noise * rng.standard_normal())
                            rows.append(
                                _row(
                                    placement,
                                    layers,
                                    seed,
                                    step,
                                    stack=stack,
                                    layer=layer,
                                    site=site,
                                    quantity="act_grad_norm",
                                    value=value,
                                )
                            )
                    rows.append(
                        _row(
                            placement,
                            layers,
                            seed,
                            step,
                            stack=stack,
                            layer=-1,
                            site="embed",
                            quantity="param_grad_norm",
                            value=1.0,
                        )
                    )
    return pd.DataFrame(rows)


def make_cka_frame(layers=6) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for placement in PLACEMENTS:
        for seed in SEEDS:
            for i in range(layers):
                for j in range(layers):
                    value = 1.0 if i == j else rng.uniform(0.0, 1.0)
                    rows.append(
                        _row(
                            placement,
                            layers,
                            seed,
                            0,
                            stack="encoder",
                            layer=i,
                            other_layer=j,
                            site="resid_post",
                            quantity="cka",
                            value=value,
                        )
                    )
    return pd.DataFrame(rows)


def _final(df: pd.DataFrame, site="resid_pre") -> pd.DataFrame:
    return df[(df.quantity == "act_grad_norm") & (df.site == site) & (df.step == STEPS[-1])]


def _line(ax, hue_value):
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == f"center:{hue_value}"]
    return line


def _band(ax, hue_value):
    (band,) = [c for c in ax.collections if c.get_gid() == f"band:{hue_value}"]
    return band


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_profile_line_is_seed_median_at_final_step(frame, placement):
    _, ax = plt.subplots()
    plot_layer_profile(frame, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder", band="minmax")
    sub = _final(frame)
    expected = np.median(
        sub[sub.placement == placement].pivot(index="layer", columns="seed", values="value").to_numpy(), axis=1
    )
    line = _line(ax, placement)
    np.testing.assert_array_equal(line.get_xdata(), np.arange(18))
    np.testing.assert_allclose(line.get_ydata(), expected, rtol=0, atol=PLOT_ATOL)


@pytest.mark.parametrize(("band", "lo_q", "hi_q"), [("minmax", 0, 100), ("iqr", 25, 75)])
def test_profile_band_covers_seed_spread(frame, band, lo_q, hi_q):
    _, ax = plt.subplots()
    plot_layer_profile(frame, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder", band=band)
    sub = _final(frame)
    per_seed = sub[sub.placement == "post"].pivot(index="layer", columns="seed", values="value").to_numpy()
    verts = _band(ax, "post").get_paths()[0].vertices
    for layer in range(18):
        ys = verts[np.isclose(verts[:, 0], layer), 1]
        assert ys.min() == pytest.approx(np.percentile(per_seed[layer], lo_q), abs=PLOT_ATOL)
        assert ys.max() == pytest.approx(np.percentile(per_seed[layer], hi_q), abs=PLOT_ATOL)


def test_profile_ci_band_is_mean_pm_t_sem(frame):
    _, ax = plt.subplots()
    plot_layer_profile(frame, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder", band="ci")
    sub = _final(frame)
    per_seed = sub[sub.placement == "pre"].pivot(index="layer", columns="seed", values="value").to_numpy()
    mean = per_seed.mean(axis=1)
    half = 4.302653 * per_seed.std(axis=1, ddof=1) / np.sqrt(3)  # t_{0.975, 2} from a table
    np.testing.assert_allclose(_line(ax, "pre").get_ydata(), mean, atol=PLOT_ATOL)
    verts = _band(ax, "pre").get_paths()[0].vertices
    for layer in (0, 9, 17):
        ys = verts[np.isclose(verts[:, 0], layer), 1]
        assert ys.min() == pytest.approx(mean[layer] - half[layer], rel=1e-6)
        assert ys.max() == pytest.approx(mean[layer] + half[layer], rel=1e-6)


@pytest.mark.parametrize(("dof", "expected"), [(1, 12.706205), (2, 4.302653), (4, 2.776445), (30, 2.042272)])
def test_t_quantile_matches_table(dof, expected):
    assert t_quantile(0.975, dof) == pytest.approx(expected, abs=T_TABLE_ATOL)


def _profile_frame(values: np.ndarray) -> pd.DataFrame:
    """One placement, len(values) layers, 2 seeds with identical values."""
    return pd.DataFrame(
        [
            _row("pre", len(values), s, 0, stack="encoder", layer=i, site="resid_post", quantity="act_norm", value=v)
            for s in (0, 1)
            for i, v in enumerate(values)
        ]
    )


@pytest.mark.parametrize(
    ("values", "expect_log"),
    [
        (np.geomspace(1e-3, 1.0, 12), True),
        (np.linspace(0.5, 0.9, 12), False),
        (np.linspace(-1e-3, 1.0, 12), False),  # spans decades in |value| but crosses zero
        (np.r_[0.0, np.geomspace(1e-3, 1.0, 11)], False),
    ],
)
def test_profile_auto_log_scale(values, expect_log):
    _, ax = plt.subplots()
    plot_layer_profile(_profile_frame(values), ax, quantity="act_norm", site="resid_post", stack="encoder")
    assert (ax.get_yscale() == "log") is expect_log


def test_profile_explicit_logy_overrides_rule():
    fig, ax = plt.subplots()
    plot_layer_profile(
        _profile_frame(np.linspace(0.5, 0.9, 5)), ax, quantity="act_norm", site="resid_post", stack="encoder", logy=True
    )
    assert ax.get_yscale() == "log"
    labels = _tick_labels(ax.yaxis)  # within one decade: plain numbers, not 6×10⁻¹
    assert labels and all(_is_plain_number(t) for t in labels), labels
    plt.close(fig)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.5, 4.9], False),  # within a decade: linear
        ([1.0, 10.0], False),  # exactly one decade is not more than one
        ([1.0, 10.01], True),
        ([1e-3, np.nan, 1.0, np.inf], True),  # non-finite values left out
        ([0.0, 1e-3, 1.0], False),  # a zero cannot sit on a log axis
        ([-1.0, 1e-3, 1.0], False),
        ([], False),
    ],
)
def test_log_axis_only_where_values_span_decades(values, expected):
    assert spans_decades(values) is expected
    assert spans_decades(pd.Series(values, dtype=float)) is expected


def _tick_labels(axis) -> list[str]:
    """The non-empty major and minor tick labels in view on a drawn axis."""
    axis.figure.canvas.draw()
    low, high = sorted(axis.get_view_interval())
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    return [t.label1.get_text() for t in ticks if low <= t.get_loc() <= high and t.label1.get_text()]


def _is_plain_number(text: str) -> bool:
    try:
        float(text.replace("\u2212", "-"))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    ("limits", "plain", "labelled"),
    [
        ((2.0, 8.0), True, {"2", "3", "4", "5", "6", "7", "8"}),  # no power of ten in view: every tick
        ((0.15, 8.0), True, {"0.2", "0.5", "1", "2", "5"}),  # under two decades: 1s, 2s and 5s
        ((1e-4, 1e2), False, set()),  # six decades: the powers of ten alone, as 10ⁿ
    ],
)
def test_a_log_axis_is_labelled_in_plain_numbers_over_few_decades(limits, plain, labelled):
    fig, ax = plt.subplots()
    ax.plot([1, 2], limits)
    log_axis(ax.yaxis)
    ax.set_ylim(*limits)
    labels = _tick_labels(ax.yaxis)
    assert ax.get_yscale() == "log" and labels
    assert all(_is_plain_number(t) for t in labels) is plain, labels
    assert set(labels) == labelled or not plain, labels
    if not plain:
        assert all("10^" in t for t in labels), labels  # mathtext powers of ten, one per major tick
    plt.close(fig)


def test_plot_lines_draws_a_narrow_range_on_a_linear_axis_unless_asked():
    from analysis.plot.figures import plot_lines

    frame = pd.DataFrame(
        [
            {"variant": "pre", "placement": "pre", "seed": s, "x": x, "value": 3.0 + x + 0.1 * s}
            for x in range(4)
            for s in (0, 1)
        ]
    )
    fig, (auto, asked) = plt.subplots(1, 2)
    plot_lines(frame, auto, x="x", logy=None)
    plot_lines(frame, asked, x="x", logy=True)
    assert auto.get_yscale() == "linear" and asked.get_yscale() == "log"
    assert all(_is_plain_number(t) for t in _tick_labels(asked.yaxis))
    plt.close(fig)


def test_profile_labels_and_legend(frame):
    _, ax = plt.subplots()
    plot_layer_profile(frame, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder")
    assert ax.get_xlabel() == "layer (0 = bottom)"
    assert ax.get_ylabel() == quantity_label("act_grad_norm", "resid_pre") == "‖∂ℒ/∂x‖ (layer input)"
    assert "decoder" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(PLACEMENTS)


def test_colors_follow_frame_order_across_panels(frame):
    """A placement keeps its color in every panel drawn from one frame, whatever each panel selects."""
    _, (a, b) = plt.subplots(1, 2)
    plot_layer_profile(frame, a, quantity="act_grad_norm", site="resid_pre", stack="decoder")
    plot_layer_profile(
        frame, b, quantity="act_grad_norm", site="resid_post", stack="decoder", where={"placement": ["peri", "post"]}
    )
    for p in ("post", "peri"):
        assert _line(a, p).get_color() == _line(b, p).get_color()
    assert len({_line(a, p).get_color() for p in PLACEMENTS}) == len(PLACEMENTS)


def test_missing_columns_are_named(frame):
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"plot_layer_profile needs columns \['site', 'seed'\]"):
        plot_layer_profile(
            frame.drop(columns=["site", "seed"]), ax, quantity="act_grad_norm", site="resid_pre", stack="decoder"
        )
    with pytest.raises(ValueError, match=r"\['other_layer'\]"):
        plot_cka_heatmap(frame.drop(columns=["other_layer"]), ax, stack="decoder", placement="pre")
    with pytest.raises(ValueError, match=r"\['layers'\]"):
        plot_depth_scaling(
            frame.drop(columns=["layers"]), ax, quantity="act_grad_norm", site="resid_pre", stack="decoder"
        )


def test_empty_selection_names_filter_and_alternatives(frame):
    _, ax = plt.subplots()
    with pytest.raises(
        ValueError,
        match=r"no rows with quantity='act_grad_norm', stack='decoder', site='mlp_out'"
        r".*available site values: \['resid_post', 'resid_pre'\]",
    ):
        plot_layer_profile(frame, ax, quantity="act_grad_norm", site="mlp_out", stack="decoder")
    with pytest.raises(ValueError, match=r"available stack values: \['decoder'\]"):
        plot_layer_profile(frame, ax, quantity="act_grad_norm", site="resid_pre", stack="encoder")
    with pytest.raises(ValueError, match=r"layer>=0"):  # embed rows sit at layer -1
        plot_layer_profile(frame, ax, quantity="param_grad_norm", site="embed", stack="decoder")
    with pytest.raises(ValueError, match=r"available quantity values"):
        plot_cka_heatmap(frame, ax, stack="decoder", placement="pre")
    with pytest.raises(ValueError, match=r"available step values: \[0, 100\]"):
        plot_layer_profile(frame, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder", step=5)


def test_mixed_configurations_are_refused():
    df = make_frame(depths=(6, 12))
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"differ in \['run', 'layers'\]"):
        plot_layer_profile(df, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder")
    plot_layer_profile(df, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder", where={"layers": 12})
    assert len(_line(ax, "pre").get_xdata()) == 12


def test_bad_band_and_layer():
    df = make_frame(depths=(6,))
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="band='sd'"):
        plot_layer_profile(df, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder", band="sd")
    with pytest.raises(ValueError, match="layer='top'"):
        plot_depth_scaling(df, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder", layer="top")


def test_heatmap_image_is_seed_mean_matrix():
    df = make_cka_frame(layers=6)
    _, ax = plt.subplots()
    plot_cka_heatmap(df, ax, stack="encoder", placement="post")
    sub = df[df.placement == "post"]
    per_seed = [
        sub[sub.seed == s].pivot(index="layer", columns="other_layer", values="value").to_numpy() for s in SEEDS
    ]
    expected = np.mean(per_seed, axis=0)
    (im,) = ax.images
    np.testing.assert_allclose(np.asarray(im.get_array()), expected, atol=PLOT_ATOL)
    assert im.get_clim() == (0.0, 1.0)
    assert im.origin == "lower"
    assert "post" in ax.get_title() and "encoder" in ax.get_title()
    assert ax.get_xlabel() and ax.get_ylabel()
    assert "cka" in ax.figure.axes[-1].get_ylabel()  # the colorbar


def test_depth_scaling_takes_last_layer_median():
    depths = (6, 12, 24)
    df = make_frame(depths=depths)
    _, ax = plt.subplots()
    plot_depth_scaling(df, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder", dodge=0.0, band="minmax")
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    (container,) = [c for c in ax.containers if c.get_label() == "post"]
    line = container.lines[0]
    sub = _final(df)
    expected = [
        sub[(sub.placement == "post") & (sub.layers == d) & (sub.layer == d - 1)].value.median() for d in depths
    ]
    np.testing.assert_array_equal(line.get_xdata(), depths)
    np.testing.assert_allclose(line.get_ydata(), expected, atol=PLOT_ATOL)
    assert ax.get_xlabel() == "model depth (layers)"


def test_depth_scaling_dodge_is_centred_on_depth():
    df = make_frame(depths=(6, 12))
    _, ax = plt.subplots()
    plot_depth_scaling(df, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder", dodge=0.05)
    xs = np.array([c.lines[0].get_xdata() for c in ax.containers])  # (placement, depth)
    np.testing.assert_allclose(np.exp(np.log(xs).mean(axis=0)), [6, 12], rtol=1e-12)
    assert len(np.unique(xs[:, 0])) == len(PLACEMENTS)


def test_depth_scaling_nonpositive_values_fall_back_to_linear():
    df = make_frame(depths=(6, 12))
    df.loc[df.quantity == "act_grad_norm", "value"] -= 1.0
    _, ax = plt.subplots()
    with pytest.warns(UserWarning, match="linear"):
        plot_depth_scaling(df, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder")
    assert ax.get_yscale() == "linear"


def test_figure_grid_shapes():
    fig, axes = figure_grid(5, ncols=3)
    assert len(axes) == 5 and len(fig.axes) == 5
    # three 4.5-inch panels would be wider than the report's page: the panels narrow, the height stays
    assert tuple(fig.get_size_inches()) == pytest.approx((PAGE_WIDTH_IN, 6.4))
    fig, axes = figure_grid(2)
    assert tuple(fig.get_size_inches()) == pytest.approx((9.0, 3.2))
    with pytest.raises(ValueError):
        figure_grid(0)


def test_save_figure_writes_png_atomically(tmp_path, frame):
    fig, (ax,) = figure_grid(1)
    plot_layer_profile(frame, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder")
    out = save_figure(fig, tmp_path / "sub" / "profile.png")
    assert out == tmp_path / "sub" / "profile.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["profile.png"]  # no temp file left
    assert not plt.fignum_exists(fig.number)


def test_save_figure_cleans_up_on_failure(tmp_path):
    fig, _ = figure_grid(1)
    with pytest.raises(ValueError):
        save_figure(fig, tmp_path / "x.notaformat")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_seed_leaves_a_gap_and_a_note(frame, bad):
    """A diverged seed must not vanish into the median of the others: its layer is a gap in the
    line and band, and the axes say how many values were left out and from which seed."""
    df = frame.copy()
    hit = (
        (df.quantity == "act_grad_norm")
        & (df.site == "resid_pre")
        & (df.step == STEPS[-1])
        & (df.placement == "post")
        & (df.seed == 2)
        & (df.layer == 5)
    )
    assert hit.sum() == 1
    df.loc[hit, "value"] = bad
    _, ax = plt.subplots()
    plot_layer_profile(df, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder")
    y = np.asarray(_line(ax, "post").get_ydata(), float)
    assert np.isnan(y[5]) and np.isfinite(np.delete(y, 5)).all()
    assert np.isfinite(np.asarray(_line(ax, "pre").get_ydata(), float)).all()  # other placements untouched
    notes = [t.get_text() for t in ax.texts]
    assert any("1 non-finite" in t and "[2]" in t for t in notes), notes


def test_heatmap_cell_with_non_finite_seed_is_blank():
    df = make_cka_frame(layers=4)
    hit = (df.placement == "post") & (df.seed == 1) & (df.layer == 2) & (df.other_layer == 3)
    df.loc[hit, "value"] = np.nan
    _, ax = plt.subplots()
    plot_cka_heatmap(df, ax, stack="encoder", placement="post")
    img = ax.images[0].get_array()
    assert np.ma.is_masked(img[2, 3]) or np.isnan(img[2, 3])
    assert np.isfinite(np.ma.filled(img, np.nan)).sum() == 15
    assert any("non-finite" in t.get_text() for t in ax.texts)


def test_every_placement_has_its_own_color_and_marker():
    from analysis.plot.figures import PLACEMENT_COLORS, PLACEMENT_MARKERS
    from models import PLACEMENTS

    assert list(PLACEMENT_COLORS) == list(PLACEMENTS) == list(PLACEMENT_MARKERS)
    assert len(set(PLACEMENT_COLORS.values())) == len(PLACEMENTS)


def test_variant_hue_takes_its_placements_color_and_forms_differ_by_line_style():
    """A hue like 'variant' is drawn in its placement's color; two forms of one placement share the
    color and differ in line style; hue values that all stand for one placement get distinct colors."""
    from analysis.plot.figures import PLACEMENT_COLORS, plot_lines

    rows = []
    for variant, placement in (("post", "post"), ("b2t", "b2t"), ("b2t + rescale", "b2t")):
        for seed in SEEDS:
            for x in range(3):
                rows.append(
                    {
                        "variant": variant,
                        "placement": placement,
                        "stack": "decoder",
                        "seed": seed,
                        "x": x,
                        "value": 1.0 + x + seed,
                    }
                )
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots()
    plot_lines(frame, ax, x="x")
    lines = {l.get_gid().split(":", 1)[1]: l for l in ax.get_lines() if l.get_gid()}
    hexed = lambda line: matplotlib.colors.to_hex(line.get_color())
    assert hexed(lines["post"]) == matplotlib.colors.to_hex(PLACEMENT_COLORS["post"])
    assert hexed(lines["b2t"]) == hexed(lines["b2t + rescale"]) == matplotlib.colors.to_hex(PLACEMENT_COLORS["b2t"])
    assert lines["b2t"].get_linestyle() != lines["b2t + rescale"].get_linestyle()
    plt.close(fig)
    norms = frame.assign(placement="pre")
    fig, ax = plt.subplots()
    plot_lines(norms, ax, x="x")
    colors = {matplotlib.colors.to_hex(l.get_color()) for l in ax.get_lines() if l.get_gid()}
    assert len(colors) == 3
    plt.close(fig)


def test_plot_lines_means_and_log_interval():
    """plot_lines' center is the seed mean (ci) or the geometric mean (logci), checked by hand."""
    from analysis.plot.figures import plot_lines

    values = {0: [1.0, 2.0, 4.0], 1: [10.0, 20.0, 40.0]}
    frame = pd.DataFrame(
        [
            {"variant": "pre", "placement": "pre", "seed": s, "x": x, "value": v}
            for x, vs in values.items()
            for s, v in enumerate(vs)
        ]
    )
    for band, center in (("ci", np.mean), ("logci", lambda v: np.exp(np.mean(np.log(v))))):
        fig, ax = plt.subplots()
        plot_lines(frame, ax, x="x", band=band)
        line = [l for l in ax.get_lines() if l.get_gid() == "center:pre"][0]
        np.testing.assert_allclose(line.get_ydata(), [center(values[0]), center(values[1])], atol=PLOT_ATOL)
        plt.close(fig)


# ------------------------------------------------------------------------------------------------
# Readability (issue 25, defects 14-15): one statistics convention, coinciding lines said, zeros on a
# log axis named, text never below FONT_MIN_PT.
# ------------------------------------------------------------------------------------------------
def test_default_band_is_the_seed_mean_with_its_t_interval(frame):
    """The project's one convention: the (geometric, on a log axis) seed mean, said in the legend."""
    sub = _final(frame)
    post = sub[(sub.placement == "post") & (sub.site == "resid_pre")]
    values = post.pivot(index="layer", columns="seed", values="value")
    geometric = np.exp(np.log(values).mean(axis=1))
    cases = ((False, values.mean(axis=1), "mean ± 95% CI"), (True, geometric, "geometric mean"))
    for logy, expected, words in cases:
        _, ax = plt.subplots()
        plot_layer_profile(frame, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder", logy=logy)
        np.testing.assert_allclose(_line(ax, "post").get_ydata(), expected.to_numpy(), rtol=1e-12)
        assert words in ax.get_legend().get_title().get_text()


def test_coinciding_lines_are_said_to_coincide(frame):
    twin = frame[frame.placement == "pre"].assign(placement="sandwich", run=lambda d: d["run"] + "-twin")
    _, ax = plt.subplots()
    plot_layer_profile(pd.concat([frame, twin]), ax, quantity="act_grad_norm", site="resid_pre", stack="decoder")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "sandwich (≡ pre)" in labels and "post" in labels and "pre" in labels


def test_an_all_zero_line_is_named_not_drawn_on_a_log_axis(frame):
    """ReZero's gradients at init are exactly 0: the other lines keep their log axis (no 1e11 offset)."""
    zero = frame[frame.placement == "pre"].assign(placement="rezero", run="rezero", value=0.0)
    _, ax = plt.subplots()
    plot_layer_profile(pd.concat([frame, zero]), ax, quantity="act_grad_norm", site="resid_pre", stack="decoder")
    assert ax.get_yscale() == "log"
    assert "rezero (≡ 0, not on a log axis)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(_line(ax, "rezero").get_ydata()) == 0


def test_update_ratio_labels_tell_its_two_meanings_apart():
    assert quantity_label("update_ratio", "mlp").startswith("‖F(x)‖/‖x‖")
    assert quantity_label("update_ratio", "model").startswith("‖Δθ‖/‖θ‖")
    assert quantity_label("param_grad_norm", "mlp.w2.weight") == "‖∂ℒ/∂W‖ (FFN output weight W₂)"


def _smallest_text(fig) -> float:
    fig.canvas.draw()  # tick labels exist only once drawn
    return min(t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text())


def test_every_text_is_at_least_the_minimum_size(frame):
    fig, axes = plt.subplots(1, 3)
    plot_layer_profile(frame, axes[0], quantity="act_grad_norm", site="resid_pre", stack="decoder")
    plot_depth_scaling(make_frame(depths=(6, 12)), axes[1], quantity="act_grad_norm", site="resid_pre", stack="decoder")
    plot_cka_heatmap(make_cka_frame(), axes[2], stack="encoder", placement="post")
    assert _smallest_text(fig) >= FONT_MIN_PT


def test_legends_sit_under_their_panels_off_the_data(frame):
    """Issue 25 (14): legends inside the axes covered lines; under the axes they cannot, and the
    figure grows by their height instead of squeezing the panel."""
    fig, axes = figure_grid(2, ncols=2, panel_size=(4.0, 3.0))
    height = fig.get_figheight()
    for ax in axes:
        plot_layer_profile(frame, ax, quantity="act_grad_norm", site="resid_pre", stack="decoder")
    assert fig.get_figheight() > height
    fig.canvas.draw()
    for ax in axes:
        legend, box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.y1 <= box.y0 and box.x0 <= legend.x0 and legend.x1 <= box.x1 + 1
