"""Claims files (`lnscope check --claims`): every bad field named, one line each, before any compute;
a two-claim file (one claim on a registered experiment's frame, one on a tiny sweep's runs) checked
through the command line with the built-in checks' verdicts, table and JSON; and the shared store:
after `lnscope report` computed an experiment's jobs, `lnscope check` with the same default store
computes none (issue 25, defect 2)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from analysis import cli
from analysis.experiments import EXPERIMENTS, claimsfile
from analysis.experiments.claims import check
from analysis.experiments.claimsfile import ClaimsFileError, claim_frames, load_claims, plot_check
from analysis.experiments.runs import InitJob, clear_memory
from analysis.options import STORE_VAR, default_store
from analysis.report import build
from tests.analysis.experiments.tinystudy import CLAIMS_FILE, EXPERIMENT, tiny_experiment, tiny_sweep
from tests.analysis.report.fakes import ATLAS, store_atlas

BAD = """
[papers]
xiong2020 = "a built-in key redeclared"

[[claim]]
id = "mine2026.a"
source = "x"
statement = "y"
experiment = "takase2023"
statistic = "ratoi"
threshold = 1.0
direction = ">"
threshold_note = "n"
features = [{ name = "a", where = { quantity = "x" }, layer = "top", transform = "sqr" }]
bogus = 1

[[claim]]
id = "mine2026.b"
source = "x"
statement = "y"
runs = "{store}/nowhere"
statistic = "ratio"
threshold = [1.0]
direction = "in"
features = [{ name = "a", where = { quantity = "x" } }]
"""
# (the field each problem line must name, a valid choice or hint it must give)
PROBLEMS = [
    ("papers.xiong2020", "built-in paper"),
    ("claim key 'bogus'", "threshold_note"),
    ("unknown paper 'mine2026'", "declare your own under [papers]"),
    ("statistic 'ratoi'", "did you mean 'ratio'?"),
    ("direction '>'", "did you mean '>='?"),
    ("experiment 'takase2023'", "did you mean 'takase2022'?"),
    ("features[0]: layer", "'all'"),
    ("transform 'sqr'", "did you mean 'square'?"),
    ("threshold_note is missing", "required"),
    ("direction 'in' needs [low, high]", "[1.0]"),
    ("runs: no finished training run", "nowhere"),
    ("takes 2 (numerator, denominator) features", "got 1"),
    ("mine2026.b", "unknown paper 'mine2026'"),
]


def test_every_bad_field_is_one_line_before_any_compute(tmp_path, monkeypatch, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    monkeypatch.setattr(claimsfile, "collect", lambda *a, **k: pytest.fail("computed before the file was valid"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", "--claims", str(path), "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 2 and lines[0].startswith("lnscope: error: ") and "Traceback" not in err
    assert all(str(path) in line for line in lines), err  # every line names the file
    for field, hint in PROBLEMS:
        assert any(field in line and hint in line for line in lines), (field, hint, err)
    assert len(lines) == len(PROBLEMS)  # one line per problem, no more
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[[claim]\n", "not valid TOML"),
        ("claims = []\n", "unknown key 'claims'; valid choices: papers, claim"),
        ("[papers]\n", "no claims"),
    ],
)
def test_file_level_problems(tmp_path, text, problem) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ClaimsFileError) as err:
        load_claims(path)
    assert any(problem in p for p in err.value.problems), err.value.problems


ARRAY_NAMES = """
[[claim]]
id = "xiong2020.arrays"
paper = ["xiong2020"]
source = "x"
statement = "y"
experiment = ["xiong2020"]
statistic = ["ratio"]
threshold = 1.0
direction = ">="
threshold_note = "n"
features = [{ name = "a", where = { quantity = "x" }, transform = ["log"] },
            { name = "b", where = { quantity = "x" } }]
"""


def test_an_array_where_a_name_belongs_is_named_not_a_traceback(tmp_path) -> None:
    # TOML arrays are unhashable: a registry lookup must not raise TypeError before the file is judged
    path = tmp_path / "arrays.toml"
    path.write_text(ARRAY_NAMES)
    with pytest.raises(ClaimsFileError) as err:
        load_claims(path)
    text = "\n".join(err.value.problems)
    for field in ("unknown paper ['xiong2020']", "unknown experiment ['xiong2020']", "unknown statistic ['ratio']"):
        assert field in text, text
    assert "unknown transform ['log']" in text, text


def test_claims_need_toml_and_repeat_no_id(tmp_path) -> None:
    with pytest.raises(ClaimsFileError, match="must be a .toml file"):
        load_claims(tmp_path / "c.json")
    one = CLAIMS_FILE.split("[[claim]]")[1].replace(EXPERIMENT, "takase2022")
    path = tmp_path / "c.toml"
    path.write_text('[papers]\nmine2026 = "me"\n[[claim]]' + one + "[[claim]]" + one)
    with pytest.raises(ClaimsFileError, match="the id repeats"):
        load_claims(path)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny sweep in the default store (runs/), then `lnscope report` of the tiny experiment into
    the same default store (jobs/): the state `make report` leaves."""
    root = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STORE_VAR, str(root / "store"))
        patch.setitem(EXPERIMENTS, EXPERIMENT, tiny_experiment())
        tiny_sweep(default_store() / "runs")
        out = root / "report"
        store_atlas(out)  # the atlas is reused, not probed: the store's jobs are the experiment's alone
        patch.setattr(build, "_atlas_figures", lambda df, meta: ())  # drawn and tested elsewhere
        argv = ["report", "--experiments", EXPERIMENT, "--preset", "tiny", "--out", str(out)]
        argv += ["--layers", str(ATLAS.layers), "--seeds", str(ATLAS.seeds), "--placements", ",".join(ATLAS.placements)]
        assert cli.main(argv) == 0
        (root / "my_claims.toml").write_text(CLAIMS_FILE)
        yield root, patch


@pytest.mark.slow
def test_two_claims_checked_from_the_store_without_recomputing(study, capsys, monkeypatch) -> None:
    root, _ = study
    store = default_store()
    assert store == root / "store"
    jobs = sorted((store / "jobs").rglob("*.parquet"))
    assert len(jobs) == 1  # the report computed the experiment's one job into the default store
    clear_memory()  # a fresh process: only the store can serve the job
    monkeypatch.setattr(InitJob, "compute", lambda self: pytest.fail(f"check recomputed {self.variant}"))
    out, figures = root / "checks.json", root / "figures"
    argv = ["check", "--claims", str(root / "my_claims.toml"), "--preset", "tiny", "--quiet"]
    assert cli.main([*argv, "--out", str(out), "--figures", str(figures)]) == 0
    assert sorted((store / "jobs").rglob("*.parquet")) == jobs  # nothing new computed
    printed = capsys.readouterr().out
    assert "2 checks" in printed and "mine2026.faster_lr_lower_loss" in printed
    rows = {r["id"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"mine2026.post_bottom_gets_more", "mine2026.faster_lr_lower_loss"}
    # the same verdict, interval and statistic as the library's check on the same frames
    claims = load_claims(root / "my_claims.toml")
    frames = claim_frames(claims, preset="tiny", store=store)
    for claim in claims:
        expected = check(claim, frames[claim.experiment]).to_json()
        got = rows[claim.id]
        assert got["verdict"] == expected["verdict"] and got["n_seeds"] == 2
        assert (got["statistic"], got["ci_low"], got["ci_high"]) == (
            expected["statistic"],
            expected["ci_low"],
            expected["ci_high"],
        )
        assert got["paper"] == "mine2026" and got["experiment"] == claim.experiment
        assert got["citation"] == "A. User 2026, my own hypotheses (a lab notebook)"
    assert rows["mine2026.faster_lr_lower_loss"]["experiment"] == f"runs:{store / 'runs'}"
    # a filter on your runs that selects nothing is named (with what there is) before any experiment runs
    monkeypatch.setattr(claimsfile, "collect", lambda *a, **k: pytest.fail("an experiment ran first"))
    typo = (root / "my_claims.toml").read_text().replace('"optim.lr" = 0.001', '"optim.lr" = 0.003')
    (root / "typo.toml").write_text(typo)
    with pytest.raises(ClaimsFileError, match=r"mine2026.faster_lr_lower_loss: .*optim.lr=0.003.*available"):
        claim_frames(load_claims(root / "typo.toml"), preset="tiny")
    assert (figures / "checks.png").stat().st_size > 5_000


def test_plot_check_draws_statistic_interval_and_threshold() -> None:
    row = {
        "id": "mine2026.x",
        "statistic": 3.0,
        "ci_low": 2.0,
        "ci_high": 5.0,
        "threshold": [1.0, 4.0],
        "direction": "in",
        "verdict": "inconclusive",
        "n_seeds": 4,
        "statistic_description": "a ratio",
    }
    fig, ax = plt.subplots()
    plot_check(row, ax)
    (bar,) = [c for c in ax.containers]
    assert list(bar.lines[0].get_xdata()) == [3.0]
    dashed = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--")
    assert dashed == [1.0, 4.0] and ax.get_xlabel() == "a ratio" and "inconclusive" in ax.get_title(loc="left")
    fig2, ax2 = plt.subplots()
    plot_check({**row, "threshold": 100.0, "direction": ">=", "verdict": "not reproduced"}, ax2)
    assert ax2.get_xscale() == "log"  # 2 .. 100 spans decades
    plt.close("all")


def test_check_and_report_refuse_an_unwritable_out_before_compute(monkeypatch, capsys, tmp_path) -> None:
    """Issue 25: `--out` of check and report is checked before compute, as `lnscope probe` does."""
    monkeypatch.setattr(claimsfile, "claim_frames", lambda *a, **k: pytest.fail("computed before checking --out"))
    status = cli.main(["check", "--claim", "takase2022.post_decoder_vanishing", "--out", "/proc/nope/c.json"])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("lnscope: error: ") and err.count("\n") == 1 and "/proc" in err
    monkeypatch.setattr(build, "build_report", lambda *a, **k: pytest.fail("computed before checking --out"))
    status = cli.main(["report", "--quick", "--experiments", "none", "--out", "/proc/nope"])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("lnscope: error: ") and err.count("\n") == 1 and "/proc" in err


def test_the_documented_example_files_are_valid(tmp_path) -> None:
    """docs/examples/my_claims.toml (a built-in experiment and a sweep) and the sweep it reads parse."""
    from analysis.train.sweep import load_sweep

    examples = Path(__file__).resolve().parents[3] / "docs" / "examples"
    (tmp_path / "runs" / "run0").mkdir(parents=True)
    (tmp_path / "runs" / "run0" / "run.json").write_text("{}")  # a finished run is all validation looks for
    claims = load_claims(examples / "my_claims.toml", store=tmp_path)
    assert [(c.experiment, c.when, c.statistic.kind) for c in claims] == [
        ("takase2022", "init", "ratio"),
        (f"runs:{tmp_path / 'runs'}", "training", "difference"),
    ]
    assert claims[0].citation and claims[0].paper == "mine2026" and claims[0].threshold == (0.1, 10.0)
    sweep = load_sweep(examples / "my_sweep.toml")
    assert [c.model.placement for c in sweep.configs()] == ["post", "pre"]


@pytest.mark.parametrize("when, problem", [("bogus", "unknown --when 'bogus'"), ("training", "none of the claims")])
def test_when_with_a_claims_file_is_checked_like_without(tmp_path, capsys, when, problem) -> None:
    text = Path("docs/examples/my_claims.toml").read_text().split("# 2. On your own sweep")[0]
    path = tmp_path / "one.toml"
    path.write_text(text)  # the example's first claim alone: an init-time claim on takase2022
    with pytest.raises(SystemExit) as exit_:
        cli.main(["check", "--claims", str(path), "--when", when, "--store", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and problem in err and "Traceback" not in err, err
