"""A reduced subset of the real checks, end to end on the tiny preset: run, store, reuse, verdicts,
figures, JSON from the CLI. The science is checked at the quick preset by `lnscope check`; here the
plumbing is (tiny models are narrower than the calibration's, so their numbers are not the claims').
The shared fixture runs 5 init jobs and 2 short training runs: slow tier."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest

from analysis.cli import main
from analysis.experiments import EXPERIMENTS, run_checks
from analysis.experiments.claims import VERDICTS
from analysis.experiments.runs import InitJob, clear_memory

# Takase's 18L-18L decoder claims (5 init jobs) and one training claim of Liu's, whose part is the
# fewest training runs of any claim (2: Post-LN and rSkip+LN; Xu's training part, for one, trains 6).
INIT_CLAIMS = ["takase2022.post_decoder_vanishing", "takase2022.b2t_mitigates", "takase2022.ln_main_source"]
TRAIN_CLAIM = "liu2021.rskip_trains_deep"
REQUIRED = {"id", "paper", "source", "statistic", "ci_low", "ci_high", "threshold", "verdict"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def table(store: Path):
    clear_memory()
    return run_checks(claim_ids=[*INIT_CLAIMS, TRAIN_CLAIM], preset="tiny", store=store)


@pytest.mark.slow
def test_checks_run_and_give_verdicts(table) -> None:
    assert list(table["id"]) == [*INIT_CLAIMS, TRAIN_CLAIM]
    assert set(table["verdict"]) <= set(VERDICTS)
    assert (table["n_seeds"] >= 2).all()
    assert REQUIRED <= set(table.columns)
    # a Post-LN encoder-decoder's decoder vanishes at any width: the tiny model shows it too
    post = table.set_index("id").loc["takase2022.post_decoder_vanishing"]
    assert post["ci_low"] <= post["statistic"] <= post["ci_high"] and post["statistic"] > 10


@pytest.mark.slow
def test_stored_jobs_are_reused(table, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second run reads every job back from the store (computing would fail) and gives the same numbers."""
    clear_memory()
    monkeypatch.setattr(InitJob, "compute", lambda self: pytest.fail(f"recomputed {self.variant}"))
    again = run_checks(claim_ids=INIT_CLAIMS, preset="tiny", store=store)
    assert again["statistic"].tolist() == table["statistic"].iloc[: len(INIT_CLAIMS)].tolist()
    assert sorted(p.suffix for p in (store / "jobs" / "init").iterdir()) == [".json"] * 5 + [".parquet"] * 5


@pytest.mark.slow
def test_cli_writes_json_and_figures(table, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, figs = tmp_path / "checks.json", tmp_path / "figs"
    rc = main(
        [
            "check",
            "--claim",
            ",".join(INIT_CLAIMS),
            "--preset",
            "tiny",
            "--store",
            str(store),
            "--quiet",
            "--out",
            str(out),
            "--figures",
            str(figs),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert all(c in printed for c in INIT_CLAIMS) and "3 checks" in printed
    rows = json.loads(out.read_text())
    assert [r["id"] for r in rows] == INIT_CLAIMS and all(REQUIRED <= set(r) for r in rows)
    names = {p.name for p in figs.iterdir()}
    assert {"takase2022_deep_profiles.png", "takase2022_deep_profiles.svg", "takase2022_ln_gains.png"} <= names


def test_cli_bad_input_exits_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as err:
        main(["check", "--claim", "takase2022.nothing"])
    assert err.value.code == 2 and "unknown claim id" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["check", "--claim", INIT_CLAIMS[0], "--out", "checks.txt"])
    assert err.value.code == 2


@pytest.mark.slow
def test_figures_have_labelled_axes(table, store: Path) -> None:
    frame = EXPERIMENTS["takase2022"].run("tiny", store, parts=["deep"])
    figs = EXPERIMENTS["takase2022"].figures(frame)
    assert set(figs) == {"takase2022_deep_profiles", "takase2022_ln_gains", "takase2022_sublayer_factors"}
    for fig in figs.values():
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
            assert ax.get_legend() is not None


@pytest.mark.slow
def test_training_rows_derive_from_the_recorded_probes(table, store: Path) -> None:
    """The stored training rows: act_grad_ratio is g_0/g_{L-1} of the same seed and step's probes, and
    final_val_loss is the last recorded validation loss of each seed."""
    import numpy as np
    import pandas as pd

    paths = sorted((store / "jobs" / "train").glob("*.parquet"))
    assert paths
    for path in paths:
        f = pd.read_parquet(path)
        g = f[(f["quantity"] == "act_grad_norm") & (f["site"] == "resid_pre") & (f["layer"] >= 0)]
        top = g["layer"].max()
        want = (
            g[g["layer"] == 0].set_index(["seed", "step"])["value"]
            / g[g["layer"] == top].set_index(["seed", "step"])["value"]
        )
        got = f[f["quantity"] == "act_grad_ratio"].set_index(["seed", "step"])["value"]
        assert len(got) == len(want) > 0
        np.testing.assert_allclose(got.sort_index().to_numpy(), want.sort_index().to_numpy(), rtol=1e-12)
        val = f[f["quantity"] == "val_loss"].sort_values("step").groupby("seed")["value"].last()
        final = f[f["quantity"] == "final_val_loss"].set_index("seed")["value"]
        np.testing.assert_allclose(final.sort_index().to_numpy(), val.sort_index().to_numpy(), rtol=1e-12)
