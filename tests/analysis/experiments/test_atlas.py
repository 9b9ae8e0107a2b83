"""The initialization atlas (analysis.experiments.atlas): its summary statistics on a frame with known
values, its settings, and the whole pipeline (probe -> parquet -> figures -> pages) on a small real run
through the CLI, including reuse and --redraw."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis.cli import main as cli_main
from analysis.experiments import EXPERIMENTS
from analysis.experiments import atlas as report
from analysis.experiments.runs import InitJob, clear_memory
from analysis.io import read_run
from analysis.probe.tidy import COLUMNS
from analysis.report.build import default_experiments
from tests.analysis.report.fakes import atlas_frame

LAYERS = 4
SEEDS = (0, 1, 2)


def _frame(placement: str, profile: dict[str, np.ndarray]) -> pd.DataFrame:
    """Rows of `profile` ({(quantity, site): (seeds, layers) values}) for one placement, both archs."""
    rows = []
    for arch, stack, _ in report.ARCH_PANELS:
        for (quantity, site), values in profile.items():
            for seed, per_layer in zip(SEEDS, values):
                for layer, value in enumerate(per_layer):
                    rows.append(
                        dict(
                            arch=arch,
                            stack=stack,
                            placement=placement,
                            seed=seed,
                            layer=layer,
                            quantity=quantity,
                            site=site,
                            value=float(value),
                        )
                    )
    return pd.DataFrame(rows)


def test_summary_table_orients_ratios_top_over_bottom() -> None:
    # Layer 0 is the bottom. Per seed s: W2 gradient 10^(s+1) at the top, 1 at the bottom, so
    # G_top/G_bottom = 10, 100, 1000 over seeds: geometric mean 100, its 95% t interval
    # 10^(2 ± t(0.975, 2)·1/√3) = [0.328, 3.05e4] (issue 25: one statistics convention).
    grad = np.array([[1.0, 2.0, 3.0, 10.0 ** (s + 1)] for s in range(3)])
    act_grad = np.array([[0.5, 1, 1, 2.0]] * 3)  # g_bottom/g_top = 0.25
    cos = np.array([[0.1, 0.2, 0.3, 0.9 + 0.01 * s] for s in range(3)])
    rms = np.array([[2.0, 3, 4, 8.0]] * 3)  # ‖x_L‖/‖x_1‖ = 4
    df = _frame(
        "post",
        {
            ("param_grad_norm", "mlp.w2.weight"): grad,
            ("act_grad_norm", "resid_pre"): act_grad,
            ("cos_adjacent", "resid_pre"): cos,
            ("act_norm", "resid_pre"): rms,
        },
    )
    table = report.summary_table(df)
    assert list(table["placement"]) == ["post", "post"] and list(table["arch"]) == ["encdec", "decoder"]
    row = table.iloc[0]
    assert row["G_top/G_bottom"] == "100 [0.328, 3.05e+04]"
    assert row["g_bottom/g_top"] == "0.25 [0.25, 0.25]"
    assert row["cos(x_L-1, x_L)"] == "0.91 [0.885, 0.935]"  # 0.91 ± 4.303 · 0.01/√3
    assert row["‖x_L‖/‖x_1‖"] == "4 [4, 4]"


def test_summary_keeps_a_diverged_seed_and_names_nan_cells() -> None:
    grad = np.array([[1.0, 1, 1, 2], [1.0, 1, 1, np.nan], [1.0, 1, 1, 4]])
    ones = np.ones((3, LAYERS))
    df = _frame(
        "pre",
        {
            ("param_grad_norm", "mlp.w2.weight"): grad,
            ("act_grad_norm", "resid_pre"): ones,
            ("cos_adjacent", "resid_pre"): ones,
            ("act_norm", "resid_pre"): ones,
        },
    )
    table = report.summary_table(df)
    assert table.iloc[0]["G_top/G_bottom"] == "n/a"  # not the mean of the two finite seeds
    note = report.nan_note(table)
    assert "encdec/pre G_top/G_bottom" in note and "decoder/pre G_top/G_bottom" in note
    assert report.nan_note(report.summary_table(_frame("pre", {("act_norm", "resid_pre"): ones}))).count("n/a") == 0


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(placements=("post", "postln")), "unknown ['postln']"),
        (dict(placements=()), "valid choices"),
        (dict(seeds=0), "seeds must be an integer >= 1, got 0"),
        (dict(layers=0), "layers must be an integer >= 1, got 0"),
    ],
)
def test_bad_atlas_settings_fail_before_compute(kwargs, needle) -> None:
    with pytest.raises(ValueError) as err:
        report.AtlasSettings(**kwargs)
    assert needle in str(err.value)


def test_atlas_key_names_every_setting() -> None:
    base = report.AtlasSettings(layers=4, seeds=2, placements=("post", "pre"))
    assert base.key() == report.AtlasSettings(layers=4, seeds=2, placements=("pre", "post")).key()  # registry order
    others = [dict(layers=5), dict(seeds=3), dict(placements=("post",)), dict(seq_len=16), dict(batch_size=4)]
    keys = {report.AtlasSettings(**{**dict(layers=4, seeds=2, placements=("post", "pre")), **o}).key() for o in others}
    assert base.key() not in keys and len(keys) == len(others)


def test_the_atlas_is_an_experiment_the_report_renders_apart() -> None:
    """Registered like the papers (its plan: one InitJob per arch and placement at every preset), and
    left out of the report's experiment sections (it has its own)."""
    assert EXPERIMENTS["atlas"] is report.EXPERIMENT and not report.EXPERIMENT.claims
    for preset, layers in (("tiny", 6), ("quick", 18), ("paper", 18)):
        jobs = report.EXPERIMENT.jobs(preset)
        assert {j.model.n_dec_layers for j in jobs} == {layers} and len(jobs) == 2 * len(report.PLACEMENTS)
    settings = report.AtlasSettings(layers=3, seeds=2, placements=("pre", "post"))
    jobs = report.atlas_experiment(settings).jobs("quick")
    assert [(j.model.arch, j.variant, j.seeds) for j in jobs] == [
        (a, p, 2) for a in ("encdec", "decoder") for p in ("post", "pre")
    ]
    assert "atlas" not in default_experiments() and set(default_experiments()) == set(EXPERIMENTS) - {"atlas"}


def test_collect_reads_the_jobs_back_as_one_tidy_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """The atlas' frame is its jobs' rows through the runs machinery, without the experiment's
    bookkeeping columns (part, variant, job): the tidy table the report stores as data/init.parquet."""
    settings = report.AtlasSettings(layers=3, seeds=2, placements=("post", "pre"))
    fake = atlas_frame(settings)

    def compute(job: InitJob) -> pd.DataFrame:
        arch, placement = job.model.arch, job.model.placement
        return fake[(fake["arch"] == arch) & (fake["placement"] == placement)].reset_index(drop=True)

    monkeypatch.setattr(InitJob, "compute", compute)
    clear_memory()
    try:
        frame = report.collect(settings, progress=False)
    finally:
        clear_memory()  # the fake rows must not serve a later test's jobs
    assert list(frame.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(frame.drop(columns="run"), fake.drop(columns="run"))  # jobs in plan order
    assert frame["run"].str.startswith("init/").all()  # each row names the job (by hash) it came from
    names = set(report.EXPERIMENT.figures(frame))
    plt.close("all")
    assert names == {q for q, _, _ in report.PROFILE_PANELS} | {f"cka_{a}" for a, _, _ in report.ARCH_PANELS}


@pytest.mark.slow
def test_report_pipeline_end_to_end(tmp_path) -> None:
    """A 2-layer atlas of three placements (one per family) probed for real through the CLI, no
    experiments: data, figures, pages; then --redraw from the data alone."""
    out = tmp_path / "report"
    placements = ["post", "pre", "rezero"]
    argv = [
        "report",
        "--out",
        str(out),
        "--layers",
        "2",
        "--seeds",
        "2",
        "--placements",
        ",".join(placements),
        "--experiments",
        "none",
    ]
    assert cli_main(argv) == 0
    df, meta = read_run(out / "data" / "init.parquet")
    assert meta["layers"] == 2 and meta["seeds"] == 2 and meta["placements"] == placements
    assert json.loads((out / "data" / "init.json").read_text())["models"]["encdec/post"]["d_model"] == 64
    assert set(df["placement"]) == set(placements) and set(df["arch"]) == {"encdec", "decoder"}
    assert set(df["seed"]) == {0, 1} and df["layer"].max() == 1
    pngs = sorted(p.name for p in (out / "figures" / "init").glob("*.png"))
    assert pngs == sorted(
        [
            "act_grad_norm.png",
            "param_grad_norm.png",
            "update_ratio.png",
            "act_norm.png",
            "ln_jacobian_gain.png",
            "cos_adjacent.png",
            "cka_encdec.png",
            "cka_decoder.png",
        ]
    )
    assert all((out / "figures" / "init" / p).stat().st_size > 10_000 for p in pngs)
    page = (out / "index.html").read_text()
    assert page.count("<tr><td>encdec</td>") == 3 and page.count("<tr><td>decoder</td>") == 3
    assert "decoder/rezero G_top/G_bottom" in page  # α = 0 at init: 0/0, named as such
    assert 'id="checks"' not in page  # --experiments none: no empty check section (issue 25, defect 8)
    # --redraw needs only the data (reuse of a stored study: tests/analysis/report/test_html_report.py)
    for p in (out / "figures").rglob("*.png"):
        p.unlink()
    assert cli_main(["report", "--out", str(out), "--redraw", "--experiments", "none"]) == 0
    assert sorted(p.name for p in (out / "figures" / "init").glob("*.png")) == pngs
    assert not list(out.rglob(".*.tmp"))  # atomic writes left no temporaries behind
