"""`lnscope report --runs` over a two-config tiny sweep (curves, profiles over steps, the summary
table with final losses) and `lnscope report --probes` over probe outputs, in the report's
self-contained HTML page; the default store's runs/ and probes/ are where they look without paths."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from analysis import cli
from analysis.io import write_run
from analysis.options import STORE_VAR
from analysis.train.store import load_runs
from tests.analysis.experiments.tinystudy import LRS, tiny_sweep
from tests.analysis.report.fakes import atlas_frame

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store")
    tiny_sweep(store / "runs")
    return store


@pytest.mark.slow
def test_report_of_a_two_config_sweep(store: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(STORE_VAR, str(store))
    out = tmp_path / "report"
    assert cli.main(["report", "--runs", "--out", str(out)]) == 0  # no DIR: the default store's runs/
    page = (out / "index.html").read_text()
    pngs = _pngs(page)
    assert all(p.startswith(PNG_MAGIC) for p in pngs)
    figures = sorted(p.name for p in (out / "figures" / "runs").glob("*.png"))
    # loss curves, and a profile over steps per probed quantity of the tiny run (act_grad_norm, param_grad_norm)
    assert figures == ["loss_curves.png", "profile_act_grad_norm_decoder.png", "profile_param_grad_norm_decoder.png"]
    assert len(pngs) == len(figures)
    assert "Your training runs" in page and "src=" not in page.replace('src="data:image/png', "")
    for lr in LRS:  # one summary row per configuration, named by what differs
        assert page.count(f"<tr><td>optim.lr={lr:g}</td>") == 1
    # the summary's final validation loss is the mean over seeds of each seed's last val_loss
    runs = load_runs(store / "runs", "runs")
    for lr in LRS:
        expected = runs.loc[np.isclose(runs["optim.lr"], lr), "final_val_loss"].mean()
        assert f"{expected:.4g}" in page or f"{expected:.3g}" in page, expected
    assert "none</td>" in page  # no seed diverged, said so


def test_report_of_probe_outputs(tmp_path: Path, monkeypatch) -> None:
    """Probe outputs (here two synthetic ones; reading needs no probing) drawn per layer, one line per file;
    `--probes` without files reads the default store's probes/."""
    frame = atlas_frame()
    quantities = {"act_grad_norm", "update_ratio", "cka"}
    frame = frame[(frame["arch"] == "decoder") & frame["quantity"].isin(quantities)]
    monkeypatch.setenv(STORE_VAR, str(tmp_path / "store"))
    for placement in ("post", "pre"):
        mine = frame[frame["placement"] == placement].assign(run=f"my-{placement}")
        write_run(mine, {"placement": placement}, tmp_path / "store" / "probes" / f"my-{placement}.parquet")
    out = tmp_path / "report"
    assert cli.main(["report", "--probes", "--out", str(out)]) == 0
    page = (out / "index.html").read_text()
    figures = sorted(p.stem for p in (out / "figures" / "probes").glob("*.png"))
    assert figures == ["act_grad_norm_decoder", "update_ratio_decoder"]  # CKA (pairwise) is no per-layer profile
    assert len(_pngs(page)) == len(figures) and "my-post" in page and "my-pre" in page


def test_bad_probes_and_empty_store_are_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv(STORE_VAR, str(tmp_path / "empty"))
    for argv, message in (
        (["--probes"], "--probes without files reads"),
        (["--probes", str(tmp_path / "nope.parquet")], "not an existing .parquet file"),
        (["--runs", str(tmp_path)], "no finished training run"),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["report", *argv, "--out", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and err.count("\n") == 1, err


def test_commands_default_to_the_shared_store(tmp_path: Path, monkeypatch) -> None:
    """Without --out, train and sweep write into <store>/runs and probe into <store>/probes: where
    `report --runs` / `--probes` and a claims file's "{store}" look (issue 25, one store)."""
    from analysis.cli import _default_probe_out
    from analysis.train.cli import _runs_folder

    monkeypatch.setenv(STORE_VAR, str(tmp_path))
    parser = cli.build_parser()
    for argv in (["sweep", "s.toml"], ["train"]):
        assert _runs_folder(parser.parse_args(argv)) == tmp_path / "runs"
    assert _runs_folder(parser.parse_args(["sweep", "s.toml", "--out", "elsewhere"])) == Path("elsewhere")
    args = parser.parse_args(["probe", "--arch", "decoder", "--placement", "pre", "--layers", "3"])
    out = _default_probe_out(cli._config_from(args), args, ("act_grad_norm",))
    assert out.parent == tmp_path / "probes" and out.name.startswith("decoder-pre-3L-") and out.suffix == ".parquet"
    other = _default_probe_out(cli._config_from(args), args, ("act_norm",))
    assert other != out  # another probe set never overwrites this one


def test_divergence_is_marked_and_left_out_of_the_final_losses() -> None:
    """A diverged seed gets a × at its divergence step and is named in the summary, whose final losses
    average the other seeds only (a synthetic frame: no training)."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from analysis.report.runs import CONFIG, curves_figure, summary_table

    rows = []
    for seed, status in ((0, "finished"), (1, "finished"), (2, "diverged")):
        for step in range(5):
            loss = np.inf if (status == "diverged" and step >= 3) else 3.0 - 0.1 * step + 0.01 * seed
            for quantity in ("loss", "val_loss"):
                rows.append(
                    {
                        "run": "r1",
                        "seed": seed,
                        "step": step,
                        "quantity": quantity,
                        "value": loss,
                        "site": "curve",
                        "status": status,
                        "diverged_step": 3 if status == "diverged" else -1,
                        "steps": 4,
                        CONFIG: "lr=1",
                    }  # fmt: skip
                )
    frame = pd.DataFrame(rows)
    fig, marked = curves_figure(frame)
    crosses = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "x"]
    assert marked == 2 and [list(ln.get_xdata()) for ln in crosses] == [[3]]  # one per panel, at step 3
    plt.close(fig)
    (row,) = summary_table(frame).to_dict("records")
    assert row["diverged"] == "seed 2 at step 3" and row["seeds"] == 3
    assert row["final validation loss"] == pytest.approx(np.mean([3.0 - 0.4, 3.0 - 0.4 + 0.01]))
