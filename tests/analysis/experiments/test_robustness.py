"""Verdict robustness (analysis.experiments.robustness): a claim built to be harness-fragile is found
flipped by the choice that flips it, and one that is not fragile holds at every grid point."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest

from analysis.cli import main
from analysis.experiments import xiong2020
from analysis.experiments.claims import Claim, value
from analysis.experiments.common import feature
from analysis.experiments.experiment import Harness
from analysis.experiments.robustness import (
    grid_points,
    harness_at,
    plot_verdict_grid,
    read_summary,
    robustness,
    robustness_by_claim,
    robustness_command,
    summarize,
)

# The test suite's small shapes; the growth part at 1 layer instead of 18.
SMALL = Harness(d_model=16, heads=2, d_ff=64, vocab=32, seq_len=8, batch_size=2, seeds=3)
PRESET = dataclasses.replace(xiong2020.PRESETS["tiny"], harness=SMALL, growth_depth=1)
# Two axes; the reference (pos none, Xavier-uniform) is the third harness, so three harnesses in all.
GRID = {"pos": ("none", "sinusoidal"), "init": ("fairseq",)}

# The bottom layer's input RMS: the token embeddings alone have unit variance per feature; fairseq's
# sinusoidal positions add sin² + cos² = 1 per pair of features, i.e. 1/2 per feature, so the RMS
# is sqrt(1.5) ≈ 1.22. A threshold of 1.15 sits between: the verdict flips with `pos` only (the init
# of the projections does not reach the bottom layer's input).
INPUT_RMS = feature("input_rms", "growth", "pre", ("act_norm", "resid_pre"), layer=0)
FRAGILE = Claim(
    id="xiong2020.toy_input_rms_below",
    paper="xiong2020",
    source="test",
    statement="the bottom layer's input RMS is at most 1.15",
    method_form="toy",
    experiment="xiong2020",
    statistic=value(INPUT_RMS, "RMS of x_0"),
    threshold=1.15,
    direction="<=",
    threshold_note="between the two harnesses' values by construction",
    needs=("growth",),
)
STURDY = dataclasses.replace(FRAGILE, id="xiong2020.toy_input_rms_below_2", threshold=2.0)


def test_grid_points_and_harness_at() -> None:
    assert grid_points({"pos": ("none", "sinusoidal"), "d_model": (64, 128)}) == [
        {"pos": "none", "d_model": 64},
        {"pos": "none", "d_model": 128},
        {"pos": "sinusoidal", "d_model": 64},
        {"pos": "sinusoidal", "d_model": 128},
    ]
    wide = harness_at(SMALL, {"d_model": 32, "init": "fairseq"})
    assert (wide.d_model, wide.d_ff, wide.heads, wide.init) == (32, 128, 2, "fairseq")
    with pytest.raises(ValueError, match="unknown init 'fairsek'.*valid choices"):
        grid_points({"init": ("fairsek",)})
    with pytest.raises(ValueError, match="unknown robustness axis 'width'"):
        grid_points({"width": (1,)})
    with pytest.raises(ValueError, match="not divisible"):
        harness_at(SMALL, {"d_model": 15})


def test_training_claims_are_refused_before_compute() -> None:
    with pytest.raises(ValueError, match="initialization-time claims only"):
        robustness([dataclasses.replace(FRAGILE, when="training")], grid=GRID, presets={"xiong2020": PRESET})


def test_cli_robustness_bad_input_exits_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as err:
        main(["check", "--robustness", "--when", "training", "--paper", "xiong2020"])
    assert err.value.code == 2 and "initialization-time claims" in capsys.readouterr().err


@pytest.mark.slow
def test_fragile_claim_is_flagged_with_the_choice_that_flips_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    frame = robustness([FRAGILE, STURDY], grid=GRID, presets={"xiong2020": PRESET}, n_boot=200)
    assert set(frame["point"]) == {"reference", *(f"pos={p}, init={i}" for p in GRID["pos"] for i in GRID["init"])}
    stat = frame[frame["claim"] == FRAGILE.id].set_index("point")["statistic"]
    assert stat["reference"] == pytest.approx(1.0, abs=0.05)  # unit-variance token inputs
    assert stat["pos=sinusoidal, init=fairseq"] == pytest.approx(1.5**0.5, abs=0.07)
    summary = summarize(frame).set_index("claim")
    assert summary.at[FRAGILE.id, "reference_verdict"] == "reproduced"
    # init=fairseq is at both points, one of which holds: it is not the choice that flips.
    assert (summary.at[FRAGILE.id, "holds"], summary.at[FRAGILE.id, "n"]) == (1, 2)
    assert summary.at[FRAGILE.id, "flipped_by"] == ("pos=sinusoidal",)
    assert summary.at[FRAGILE.id, "text"] == "holds 1/2; flipped by pos=sinusoidal"
    assert (summary.at[STURDY.id, "holds"], summary.at[STURDY.id, "flipped_by"]) == (2, ())
    by_claim = robustness_by_claim(frame)
    assert by_claim[FRAGILE.id]["flipped_by"] == ["pos=sinusoidal"]
    fig = plot_verdict_grid(frame)
    assert len(fig.axes[0].get_yticklabels()) == 2
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [
        "reference\nnone\nxavier_uniform",
        "none\nfairseq",
        "sinusoidal\nfairseq",
    ]
    # what `lnscope check --robustness` prints and writes (the jobs are in memory by now)
    options = dict(preset="tiny", store=None, n_boot=200, seed=0, quiet=True, grid=GRID, presets={"xiong2020": PRESET})
    assert robustness_command([FRAGILE, STURDY], out=str(tmp_path / "r.json"), figures=str(tmp_path), **options) == 0
    printed = capsys.readouterr().out
    assert "xiong2020.toy_input_rms_below    reproduced      holds 1/2; flipped by pos=sinusoidal" in printed
    written = json.loads((tmp_path / "r.json").read_text())
    assert read_summary(tmp_path / "r.json") == by_claim
    assert written["summary"][FRAGILE.id]["flipped_by"] == ["pos=sinusoidal"]
    assert len(written["points"]) == 6 and (tmp_path / "robustness.png").stat().st_size > 0


def test_claims_on_your_own_data_and_bad_summary_files_are_named_before_any_compute(tmp_path) -> None:
    import dataclasses
    import json

    from analysis.experiments import CLAIMS
    from analysis.experiments.robustness import read_summary, robustness

    claim = dataclasses.replace(next(c for c in CLAIMS.values() if c.when == "init"), experiment="probes:/x.parquet")
    with pytest.raises(ValueError, match=r"read your own runs or probe outputs: \['"):
        robustness([claim])
    for bad in ({"summary": []}, {"summary": {"a.b": "holds 1/2"}}, {"rows": []}):
        path = tmp_path / "r.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="not a robustness file"):
            read_summary(path)
