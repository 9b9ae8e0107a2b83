"""The experiment registry as data: every claim well-formed and runnable, every preset buildable,
the committed claim catalogue up to date. No model is run here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from analysis.experiments import CLAIMS, EXPERIMENTS, select_claims
from analysis.experiments.catalogue import catalogue_markdown
from analysis.experiments.claims import PAPERS
from analysis.experiments.experiment import PRESET_NAMES
from analysis.experiments.runs import job_key

ROOT = Path(__file__).resolve().parents[3]


def test_every_paper_has_checks_and_training_claims() -> None:
    """The issue's bar: each of the five papers has at least two checks, and Xiong's, Xu's and
    Takase's each include a training-time one."""
    per_paper = Counter(c.paper for c in CLAIMS.values())
    assert set(per_paper) == set(PAPERS)
    assert all(n >= 2 for n in per_paper.values()), per_paper
    training = {c.paper for c in CLAIMS.values() if c.when == "training"}
    assert {"xiong2020", "xu2019", "takase2022"} <= training


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_plans_build_and_claims_name_real_parts(name: str, preset: str) -> None:
    """Every preset's plan builds (ModelConfig / TrainConfig validation included), every job's spec
    is JSON, and every claim's parts exist in every preset (claims do not depend on the preset)."""
    exp = EXPERIMENTS[name]
    plan = exp.plan(exp.preset(preset))
    for part, jobs in plan.items():
        assert jobs, f"{name}/{preset}/{part} has no jobs"
        for job in jobs:
            json.dumps(job.spec(), default=str)
            if job.kind == "train":
                job.config()  # the TrainConfig validates (sizes, warm-up <= steps, ...)
    for claim in exp.claims:
        assert claim.experiment == name
        assert set(claim.needs) <= set(plan), (claim.id, claim.needs, list(plan))


def test_paper_presets_are_the_papers_sizes() -> None:
    for name in ("takase2022", "xie2023", "xiong2020"):
        exp = EXPERIMENTS[name]
        models = [j.model for jobs in exp.plan(exp.preset("paper")).values() for j in jobs]
        assert {(m.d_model, m.heads, m.d_ff) for m in models} == {(512, 8, 2048)}, name
    deep = [j.model for j in EXPERIMENTS["takase2022"].plan(EXPERIMENTS["takase2022"].preset("paper"))["deep"]]
    assert {m.n_dec_layers for m in deep} == {18}


def test_claim_ids_unique_and_statements_complete() -> None:
    ids = [c.id for e in EXPERIMENTS.values() for c in e.claims]
    assert len(ids) == len(set(ids))
    for c in CLAIMS.values():
        for field in ("source", "statement", "method_form", "threshold_note"):
            assert len(getattr(c, field)) > 10, (c.id, field)
        assert c.statistic.description and "placeholder" not in c.statistic.description


def test_shared_jobs_hash_alike() -> None:
    """Takase's 18-layer Post-LN decoder-only control is the same job as Xiong's 18-layer Post-LN run."""
    takase, xiong = EXPERIMENTS["takase2022"], EXPERIMENTS["xiong2020"]
    control = [j for j in takase.plan(takase.preset("quick"))["deep"] if j.model.arch == "decoder"][0]
    growth = [j for j in xiong.plan(xiong.preset("quick"))["growth"] if j.model.placement == "post"][0]
    assert job_key(control) == job_key(growth) and control.variant != growth.variant


def test_selection_errors() -> None:
    with pytest.raises(ValueError, match="unknown paper"):
        select_claims(papers=["nobody2020"])
    with pytest.raises(ValueError, match="unknown claim id"):
        select_claims(claim_ids=["xu2019.nothing"])
    with pytest.raises(ValueError, match="no claim matches"):
        select_claims(papers=["deepnorm_admin"], when=["training"])
    assert all(c.paper == "xu2019" for c in select_claims(papers=["xu2019"]))


def test_committed_catalogue_is_current() -> None:
    """docs/claims.md is generated; regenerate with `lnscope check --catalogue docs/claims.md`."""
    assert (ROOT / "docs" / "claims.md").read_text() == catalogue_markdown()
