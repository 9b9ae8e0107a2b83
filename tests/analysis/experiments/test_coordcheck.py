"""The coordinate check (analysis.experiments.coordcheck): its rows against numpy on the models the
training loop itself produces (train -> checkpoint -> load_model), its settings' validation, the
placement as a parameter, and its figure (x = width or depth, log; y = RMS, log; one line per step)."""

from __future__ import annotations

import dataclasses

import matplotlib
import numpy as np
import pandas as pd
import pytest

from analysis.experiments import EXPERIMENTS
from analysis.experiments.coordcheck import (
    POSITIONS,
    PRESETS,
    QUANTITIES,
    _plan,
    coordcheck_figure,
    measure_steps,
    shown_steps,
)
from analysis.probe.loss import model_inputs
from analysis.train import load_model, train
from analysis.train.step import val_key
from analysis.train.tasks import prepare
from models import build_model

matplotlib.use("Agg")

SETTINGS = dataclasses.replace(PRESETS["tiny"], seeds=1, steps=2)


def _np_rms(a) -> np.ndarray:
    """(L, ...) -> (L,): sqrt(mean a²) per layer, float64."""
    a = np.asarray(a, np.float64)
    return np.sqrt(np.mean(a.reshape(a.shape[0], -1) ** 2, axis=1))


def test_rows_are_the_training_loops_models_on_a_fixed_batch(tmp_path) -> None:
    """Step 0 is the model build_model makes; step k is the model `train` checkpoints after k updates
    (an independent path: the loop's own stepping, orbax, load_model); RMS and Δ restated in numpy."""
    cfg = SETTINGS.train_config(SETTINGS.model("pre", 16, 2))
    rows = measure_steps(cfg, ("resid_post", "mlp_out"))
    assert sorted(set(rows["step"])) == [0, 1, 2] and set(rows["quantity"]) == set(QUANTITIES)
    result = train(cfg, tmp_path)
    assert result.status == {0: "finished"}
    data = prepare(cfg.task, cfg.model)
    inputs = model_inputs(cfg.model, data.batch(data.arrays, val_key(cfg.task.data_seed, 0), split="val"))
    before = build_model(cfg.model, 0).forward(*inputs)
    after = load_model(result.folder).forward(*inputs)
    for step, out in ((0, before), (2, after)):
        for site in ("resid_post", "mlp_out"):
            h, h0 = out.sites["decoder"]["layers"][site], before.sites["decoder"]["layers"][site]
            for quantity, want in (("coord_rms", _np_rms(h)), ("coord_delta_rms", _np_rms(np.subtract(h, h0)))):
                got = rows[(rows["step"] == step) & (rows["site"] == site) & (rows["quantity"] == quantity)]
                got = got.sort_values("layer")
                assert list(got["layer"]) == [0, 1] and (got["stack"] == "decoder").all()
                np.testing.assert_allclose(got["value"], want, rtol=2e-5, atol=1e-7)
        logits = rows[(rows["step"] == step) & (rows["site"] == "logits") & (rows["quantity"] == "coord_delta_rms")]
        want = np.sqrt(np.mean((np.asarray(out.logits, np.float64) - np.asarray(before.logits, np.float64)) ** 2))
        assert logits["layer"].tolist() == [-1] and logits["value"].iloc[0] == pytest.approx(want, rel=2e-5, abs=1e-7)
    assert (rows.loc[rows["step"] == 0, "value"][rows["quantity"] == "coord_delta_rms"] == 0).all()
    assert (rows.loc[rows["step"] == 2, "value"][rows["quantity"] == "coord_delta_rms"] > 0).all()


def test_settings_are_validated_and_the_placement_is_a_parameter() -> None:
    with pytest.raises(ValueError, match=r"unknown \['completeP'\]; valid: post, pre"):
        dataclasses.replace(SETTINGS, placements=("completeP",))
    with pytest.raises(ValueError, match="width 20 must be a positive multiple of head_dim=8"):
        dataclasses.replace(SETTINGS, widths=(16, 20))
    with pytest.raises(ValueError, match="needs widths or depths"):
        dataclasses.replace(SETTINGS, widths=(), depths=())
    plan = _plan(dataclasses.replace(SETTINGS, placements=("pre", "post")))
    assert set(plan) == {"width", "depth"}
    width = [
        (j.variant, j.config.model.placement, j.config.model.d_model, j.config.model.layers) for j in plan["width"]
    ]
    assert width == [("pre", "pre", 16, 2), ("pre", "pre", 32, 2), ("post", "post", 16, 2), ("post", "post", 32, 2)]
    assert [j.config.model.layers for j in plan["depth"]] == [2, 4, 2, 4]
    assert EXPERIMENTS["coordcheck"].preset("quick").placements == ("pre", "completep")
    assert not EXPERIMENTS["coordcheck"].claims


def _synthetic(part: str) -> pd.DataFrame:
    """A frame of the check's shape with known values: RMS = x^slope · (1 + step), Δ = 0 at step 0."""
    rows = []
    sizes = (16, 32, 64)
    for placement, slope in (("pre", 0.5), ("post", 0.0)):
        for size in sizes:
            d_model, layers = (size, 4) if part == "width" else (16, size // 8)
            for step in range(8):
                for seed in (0, 1):
                    value = float(size) ** slope * (1 + step)
                    for quantity in QUANTITIES:
                        v = value if quantity == "coord_rms" or step else 0.0
                        common = dict(placement=placement, d_model=d_model, layers=layers, step=step, seed=seed)
                        common.update(quantity=quantity, value=v, part=part, other_layer=-1)
                        rows += [dict(common, stack="decoder", site="resid_post", layer=i) for i in range(layers)]
                        rows.append(dict(common, stack="model", site="logits", layer=-1))
    return pd.DataFrame(rows)


@pytest.mark.parametrize("part, x", [("width", [16, 32, 64]), ("depth", [2, 4, 8])])
def test_figure_draws_one_line_per_step_against_size_on_log_axes(part, x) -> None:
    import matplotlib.pyplot as plt

    fig = coordcheck_figure(_synthetic(part), part)
    axes = fig.axes
    assert len(axes) == 2 * 2 * (len(POSITIONS) + 1)  # (placement, quantity) rows x (3 layers + logits)
    steps = shown_steps(range(8))
    assert len(steps) == 6 and steps[0] == 0 and steps[-1] == 7
    for i, ax in enumerate(axes):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        delta_row = (i // (len(POSITIONS) + 1)) % 2 == 1
        lines = ax.get_lines()
        assert len(lines) == len(steps) - delta_row  # Δ = 0 at step 0 is left off the log axis
        for line in lines:
            assert list(line.get_xdata()) == x
    pre_rms_first = axes[0].get_lines()[0].get_ydata()
    np.testing.assert_allclose(pre_rms_first, np.sqrt([16, 32, 64]))  # step 0 of "pre": x^0.5
    plt.close(fig)
    with pytest.raises(ValueError, match="unknown coordinate-check sweep 'height'; valid: width, depth"):
        coordcheck_figure(_synthetic(part), "height")
