"""The 2024-26 papers' experiments (sun2025, kedia2024, peri_olmo2, dey2025): their statistics read the
rows they name (synthetic frames with known answers) and their tiny presets run end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.experiments import EXPERIMENTS, dey2025, sun2025
from analysis.experiments.claims import VERDICTS, check
from analysis.experiments.runs import job_key

NEW = ("sun2025", "kedia2024", "peri_olmo2", "dey2025")


def test_the_depth_papers_share_their_pre_ln_job() -> None:
    """One 24-layer Pre-LN job (one hash) serves the LNS, DeepScaleLM and Peri-LN/OLMo-2 claims, and
    CompleteP's claims read the coordinate check's own depth jobs."""
    keys = [
        {job_key(j) for j in EXPERIMENTS[name].jobs("quick") if j.variant == "pre"}
        for name in ("sun2025", "kedia2024", "peri_olmo2")
    ]
    assert len(keys[0]) == 1 and keys[0] == keys[1] == keys[2]
    coord = {job_key(j) for j in EXPERIMENTS["coordcheck"].jobs("quick", ["depth"])}
    assert {job_key(j) for j in EXPERIMENTS["dey2025"].jobs("quick", ["depth"])} == coord


def _angles(distance) -> pd.DataFrame:
    """angular_distance rows d(l, l+1) = distance(l) of 'pre' and 'lns' (2 seeds, 24 layers)."""
    rows = [
        dict(
            part="deep", variant=v, stack="decoder", quantity="angular_distance", site="resid_post",
            layer=l, other_layer=l + 1, layers=sun2025.DEPTH, seed=s, value=distance(l) * scale * (1 + 0.01 * s),
        )
        for v, scale in (("pre", 1.0), ("lns", 2.0))
        for l in range(sun2025.DEPTH - 1)
        for s in (0, 1)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_angle_statistics_read_the_quarters() -> None:
    frame = _angles(lambda l: 1.0 / (1 + l))
    top = np.mean([1 / (1 + l) for l in sun2025.TOP_PAIRS])
    bottom = np.mean([1 / (1 + l) for l in sun2025.BOTTOM_PAIRS])
    assert sun2025.angle_quarters("pre").value(frame) == pytest.approx(top / bottom, rel=1e-6)
    assert sun2025.angle_top_ratio("lns", "pre").value(frame) == pytest.approx(2.0, rel=1e-9)


def _updates(slopes: dict[str, float]) -> pd.DataFrame:
    """coord_delta_rms of the top layer = L^slope at step STEP (3 seeds), one other step as a decoy."""
    rows = [
        dict(
            part="depth", variant=p, stack="decoder", quantity="coord_delta_rms", site="resid_post",
            layer=depth - 1, layers=depth, step=step, seed=s, value=float(depth) ** slope * (1 + 0.01 * s) * (1 + step),
        )
        for p, slope in slopes.items()
        for depth in dey2025.DEPTHS
        for step in (1, dey2025.STEP)
        for s in (0, 1, 2)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_coordinate_check_claims_recover_known_slopes() -> None:
    frame = _updates({"pre": 1.5, "completep": -0.05})
    assert dey2025.update_slope("pre").value(frame) == pytest.approx(1.5, abs=1e-9)
    assert dey2025.abs_update_slope("completep").value(frame) == pytest.approx(0.05, abs=1e-9)
    depth_claims = [c for c in EXPERIMENTS["dey2025"].claims if c.needs == ("depth",)]
    verdicts = {c.id.split(".")[1]: check(c, frame, n_boot=200).verdict for c in depth_claims}
    assert verdicts == {"completep_update_flat_in_depth": "reproduced", "pre_update_grows_with_depth": "reproduced"}
    flat = _updates({"pre": 0.0, "completep": 1.0})  # the opposite world reads as not reproduced
    assert {check(c, flat, n_boot=200).verdict for c in depth_claims} == {"not reproduced"}


@pytest.mark.slow
def test_init_experiments_tiny_end_to_end() -> None:
    """The tiny presets of the init-time experiments run, every claim gives a verdict with a finite
    statistic, and every figure draws."""
    import matplotlib.pyplot as plt

    for name in ("sun2025", "kedia2024", "peri_olmo2"):
        exp = EXPERIMENTS[name]
        frame = exp.run("tiny")
        for claim in exp.claims:
            result = check(claim, frame, n_boot=200)
            assert result.verdict in VERDICTS and np.isfinite(result.statistic), result
        figs = exp.figures(frame)
        assert figs
        for fig in figs.values():
            plt.close(fig)


def test_new_claims_calibrated_on_seeds_no_preset_checks() -> None:
    """Every new claim with a calibration record: threshold = the rule's, held-out seeds = its
    experiment's quick seeds, calibration seeds read by no preset; the rest say why not calibrated."""
    from analysis.experiments import CLAIMS

    new = [c for c in CLAIMS.values() if c.paper in NEW]
    assert {c.paper for c in new} == set(NEW) and all(sum(c.paper == p for c in new) >= 2 for p in NEW)
    for c in new:
        cal = c.calibration
        if cal is None:
            assert "not calibrated" in c.threshold_note, c.id
            continue
        assert cal.threshold() == c.threshold and cal.preset == "quick" and cal.held_out_result, c.id
        quick = EXPERIMENTS[c.experiment].jobs("quick", c.needs)
        held_out = {s for j in quick for s in (range(j.seeds) if hasattr(j, "seeds") else j.config.seeds)}
        assert set(cal.held_out_seeds) == held_out, c.id
        assert not set(cal.seeds) & set(range(16)), c.id
