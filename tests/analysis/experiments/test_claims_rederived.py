"""The re-derived claims (issue 24): calibration records as data, superseded claims kept visible, the
paper's setting next to ours in JSON and catalogue, and the new statistics against numpy on synthetic
frames. Only the seeded-job test computes a (tiny) model."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main
from analysis.experiments import CLAIMS, SUPERSEDED, liu2021, select_claims, takase2022
from analysis.experiments.calibration import SeededInitJob, _variants, calibrate, calibration_frame
from analysis.experiments.catalogue import catalogue_markdown, check_footer
from analysis.experiments.claims import THRESHOLD_RULES, Calibration, Claim, Feature, check, json_safe, ratio
from analysis.experiments.experiment import HARNESSES
from analysis.experiments.runs import _compute, job_key

REDERIVED = (
    "xie2023.residual_bottom_bounded_below",
    "xiong2020.pre_layers_equal_encdec",
    "xiong2020.post_layers_grow_encdec",
    "takase2022.cross_sublayer_smallest",
    "liu2021.ln_removes_depth_distortion",
)
OLD = (
    "xie2023.residual_lower_bound_depth",
    "xiong2020.pre_layers_equal",
    "takase2022.cross_ln_smallest",
    "liu2021.ln_bounds_every_lambda_above",
)


def test_superseded_records_name_live_replacements() -> None:
    assert set(SUPERSEDED) == set(OLD)
    for s in SUPERSEDED.values():
        assert s.id not in CLAIMS  # never checked again
        assert s.replaced_by and all(r in CLAIMS and CLAIMS[r].paper == s.paper for r in s.replaced_by)
        assert len(s.why) > 40 and s.old_statistic


def test_a_superseded_id_says_by_which_and_why(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match=r"superseded by xie2023\.residual_bottom_bounded_below: the paper states"):
        select_claims(claim_ids=["xie2023.residual_lower_bound_depth"])
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--claim", "takase2022.cross_ln_smallest"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and "superseded by takase2022.cross_sublayer_smallest" in err
    assert "Traceback" not in err
    assert main(["check", "--superseded", "--paper", "liu2021"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("liu2021.ln_bounds_every_lambda_above is superseded by")


@pytest.mark.parametrize("claim_id", REDERIVED)
def test_rederived_claims_are_calibrated_on_other_seeds(claim_id: str) -> None:
    """The threshold is the rule's on the calibration value (Claim checks it when built); the held-out seeds are
    the quick preset's, and no preset checks a calibration seed."""
    c = CLAIMS[claim_id]
    cal = c.calibration
    assert cal is not None and c.paper_setting and c.our_setting
    assert cal.threshold() == c.threshold and cal.preset == "quick"
    assert cal.held_out_seeds == tuple(range(HARNESSES["quick"].seeds))
    assert not set(cal.seeds) & {s for h in HARNESSES.values() for s in range(h.seeds)}
    assert cal.interval[0] <= cal.value <= cal.interval[1]


def _frame() -> pd.DataFrame:
    """8 seeds x 4 layers of one quantity for variants a and b (a's top layer 3x its bottom)."""
    rng = np.random.default_rng(0)
    rows = []
    for variant, top in (("a", 3.0), ("b", 1.0)):
        for seed in range(8):
            for layer in range(4):
                value = (top if layer == 3 else 1.0) * (1 + 0.01 * rng.standard_normal())
                rows.append(dict(seed=seed, variant=variant, quantity="q", layer=layer, layers=4, value=value))
    return pd.DataFrame(rows)


def _claim(**kw) -> Claim:
    stat = ratio(
        Feature("top", {"variant": "a", "quantity": "q"}, layer=-1),
        Feature("bottom", {"variant": "a", "quantity": "q"}, layer=0),
        "a's top over bottom",
    )
    fields = dict(
        id="xie2023.synthetic",
        paper="xie2023",
        source="a test",
        statement="a's top is larger",
        method_form="synthetic",
        experiment="xie2023",
        statistic=stat,
        threshold=1.2,
        direction=">=",
        threshold_note="from a calibration",
        paper_setting="the paper's",
        our_setting="ours",
        calibration=Calibration(tuple(range(100, 108)), tuple(range(8)), "quick", 3.0, (2.9, 3.1), "fraction", 2.5),
    )
    return Claim(**{**fields, **kw})


def test_settings_and_calibration_reach_the_json_and_the_footer() -> None:
    row = json_safe(check(_claim(), _frame(), n_boot=200).to_json())
    assert row["paper_setting"] == "the paper's" and row["our_setting"] == "ours"
    assert row["seeds"] == list(range(8)) and row["calibration_seeds"] == list(range(100, 108))
    assert row["calibration_value"] == 3.0 and "v / m with m = 2.5" in row["threshold_rule"]
    assert row["verdict"] == "reproduced" and row["note"] == ""
    bare = json_safe(check(_claim(calibration=None, paper_setting="", our_setting=""), _frame(), n_boot=200).to_json())
    assert bare["calibration_value"] is None and bare["calibration_seeds"] == [] and bare["threshold_rule"] == ""
    footer = "\n".join(check_footer([row, bare]))
    assert "  xie2023.synthetic\n      paper: the paper's\n      ours:  ours" in footer
    assert footer.count("xie2023.synthetic") == 1 and "xie2023.residual_lower_bound_depth" in footer


def test_a_check_on_calibration_seeds_says_so() -> None:
    cal = Calibration((6, 7, 100), tuple(range(6)), "quick", 3.0, (2.9, 3.1), "fraction", 2.5)
    assert "reads calibration seeds [6, 7]" in check(_claim(calibration=cal), _frame(), n_boot=200).note


def test_calibration_records_are_validated() -> None:
    with pytest.raises(ValueError, match="not its calibration rule's 1.2"):
        _claim(threshold=1.5)
    with pytest.raises(ValueError, match="disjoint"):
        Calibration((1, 2), (0, 1), "quick", 3.0, (2.9, 3.1), "fraction", 2.5)
    with pytest.raises(ValueError, match="unknown rule"):
        Calibration((9,), (0,), "quick", 3.0, (2.9, 3.1), "halve", 2.5)
    with pytest.raises(ValueError, match="fails its own threshold"):  # 'multiple' gives an upper bound
        _claim(threshold=7.5, calibration=Calibration((9,), (0,), "quick", 3.0, (2.9, 3.1), "multiple", 2.5))
    band = THRESHOLD_RULES["log_band"].apply(0.5, 2.0)
    assert band == (0.25, 4.0)


def test_catalogue_lists_settings_calibrations_and_superseded() -> None:
    text = catalogue_markdown()
    for cid in REDERIVED:
        section = text.split(f"### `{cid}`\n", 1)[1].split("\n### ", 1)[0]
        assert "**Paper's setting:**" in section and "**Our setting:**" in section
        assert "**Calibration:** seeds 100-107 (quick preset)" in section and "**Held-out check:** seeds 0-7" in section
    tail = text.split("## Superseded claims", 1)[1]
    assert all(f"### `{old}` (superseded)" in tail for old in OLD)


def _takase_frame(factors: dict[str, float], layers: int = 3) -> tuple[pd.DataFrame, float]:
    """Stream-gradient rows of the Post-LN 'deep' variant whose sublayers have these backward factors."""
    rng = np.random.default_rng(1)
    rows, logs = [], {k: [] for k in factors}
    for seed in range(4):
        for layer in range(layers):
            g_post = 1.0 + 0.1 * rng.random()
            g = {"resid_post": g_post}
            g["resid_mid_cross"] = g_post * factors["FFN"] * (1 + 0.05 * rng.random())
            g["resid_mid"] = g["resid_mid_cross"] * factors["cross-attention"]
            g["resid_pre"] = g["resid_mid"] * factors["self-attention"]
            rows += [
                dict(
                    part="deep",
                    variant="post",
                    stack="decoder",
                    quantity="act_grad_norm",
                    site=site,
                    seed=seed,
                    layer=layer,
                    layers=layers,
                    value=value,
                )
                for site, value in g.items()
            ]
    frame = pd.DataFrame(rows)
    means = frame.groupby(["site", "layer"])["value"].mean()
    for name, (a, b) in takase2022.SUBLAYER_ENDS.items():
        logs[name] = np.mean([math.log(means[a, layer] / means[b, layer]) for layer in range(layers)])
    return frame, logs["cross-attention"] - min(logs["self-attention"], logs["FFN"])


def test_takase_sublayer_factor_statistic() -> None:
    stat = CLAIMS["takase2022.cross_sublayer_smallest"].statistic
    frame, expected = _takase_frame({"self-attention": 1.0, "cross-attention": 0.7, "FFN": 1.0})
    assert stat.value(frame) == pytest.approx(expected, rel=1e-9) and expected < -0.3
    frame, expected = _takase_frame({"self-attention": 0.6, "cross-attention": 0.7, "FFN": 1.0})
    assert stat.value(frame) == pytest.approx(expected, rel=1e-9) and expected > 0
    # the figure's rows: the same factors per seed and layer (FFN's carries the frame's 5% jitter)
    rows = takase2022.sublayer_factors(frame).groupby("site")["value"]
    assert rows.size().to_dict() == {name: 4 * 3 for name in takase2022.SUBLAYER_ENDS}
    np.testing.assert_allclose(rows.min()[["self-attention", "cross-attention"]], [0.6, 0.7], rtol=1e-12)
    np.testing.assert_allclose(rows.max()[["self-attention", "cross-attention"]], [0.6, 0.7], rtol=1e-12)
    assert 1.0 <= rows.min()["FFN"] <= rows.max()["FFN"] <= 1.05


def test_liu_depth_statistic_is_the_largest_log_change() -> None:
    """g_1/g_L doubles from 12 to 24 layers at λ = 1.5 and stays put elsewhere: the statistic is ln 2."""
    rows = []
    for lam in liu2021.WITH_LN:
        for depth in (12, 24):
            bottom = 2.0 if (lam == 1.5 and depth == 24) else 1.0
            for seed in range(3):
                for layer, value in ((0, bottom * 3.0), (depth - 1, 3.0)):
                    rows.append(
                        dict(
                            part="lambda",
                            variant=liu2021.with_ln(lam),
                            stack="decoder",
                            quantity="act_grad_norm",
                            site="resid_pre",
                            seed=seed,
                            layer=layer,
                            layers=depth,
                            value=value,
                        )
                    )
    stat = CLAIMS["liu2021.ln_removes_depth_distortion"].statistic
    assert stat.value(pd.DataFrame(rows)) == pytest.approx(math.log(2.0), rel=1e-12)


def test_seeded_job_is_the_same_computation_on_other_seeds() -> None:
    base = HARNESSES["tiny"].init_job("pre", ("act_grad_norm", "param_grad_norm", "act_norm"), "decoder", "pre", 2)
    moved = SeededInitJob(base, first_seed=1)
    assert job_key(moved) != job_key(base) and moved.variant == base.variant
    here, there = _compute(base, None), _compute(moved, None)
    assert sorted(there["seed"].unique()) == [1, 2, 3]
    cols = ["quantity", "site", "stack", "layer", "value"]
    pd.testing.assert_frame_equal(
        here[here["seed"] == 1][cols].reset_index(drop=True), there[there["seed"] == 1][cols].reset_index(drop=True)
    )


def test_calibration_reads_only_what_the_claim_needs() -> None:
    claim = CLAIMS["liu2021.ln_removes_depth_distortion"]
    assert _variants(claim) == {liu2021.with_ln(lam) for lam in liu2021.WITH_LN}
    with pytest.raises(ValueError, match="only initialization parts"):
        calibration_frame("xiong2020", ("train",), first_seed=100, preset="tiny")
    with pytest.raises(ValueError, match="unknown or no parts"):
        calibration_frame("xiong2020", ("nothing",), first_seed=100, preset="tiny")
    with pytest.raises(ValueError, match="no jobs of the variants"):
        calibration_frame("xiong2020", ("encdec",), first_seed=100, preset="tiny", variants={"b2t"})


def test_calibrate_moves_the_claims_jobs_to_the_calibration_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plumbing, without computing (test_seeded_job_... computes a moved job): the claim's jobs of the
    tiny preset, moved to seeds 100-102, feed its check."""
    seen = []

    def fake_run_jobs(jobs, store, *, progress, desc):
        seen.extend(jobs)
        rows = [
            dict(
                variant=j.variant,
                stack="decoder",
                quantity="param_grad_norm",
                site="mlp.w2.weight",
                seed=seed,
                layer=layer,
                layers=6,
                value=1.0 + 2.0 * (layer == 5) + 0.001 * (seed - 100),
            )
            for j in jobs
            for seed in range(j.first_seed, j.first_seed + j.base.seeds)
            for layer in range(6)
        ]
        return pd.DataFrame(rows)

    monkeypatch.setattr("analysis.experiments.calibration.run_jobs", fake_run_jobs)
    result = calibrate(CLAIMS["xiong2020.post_layers_grow_encdec"], first_seed=100, preset="tiny", n_boot=200)
    assert [(j.variant, j.first_seed, j.base.model.arch) for j in seen] == [("post", 100, "encdec")]
    assert result.seeds == (100, 101, 102) and result.calibration_seeds == tuple(range(100, 108))
    assert "reads calibration seeds [100, 101, 102]" in result.note
    assert result.statistic == pytest.approx(3.001 / 1.001, rel=1e-12)  # top over bottom seed means
