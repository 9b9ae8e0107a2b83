"""The experiments room: one module per paper, claims as data, and the hypothesis checks.

    from analysis.experiments import EXPERIMENTS, CLAIMS, run_checks
    table = run_checks(papers=["xiong2020"], preset="quick", store="results")   # one row per check
    frame = EXPERIMENTS["xiong2020"].run("quick")                              # the tidy frame
    figs = EXPERIMENTS["xiong2020"].figures(frame)                             # {name: Figure}

Experiments: takase2022, xie2023, xiong2020, liu2021, xu2019, deepnorm_admin and the 2024-26 papers'
sun2025, kedia2024, peri_olmo2, dey2025, ngpt2024 (analysis/experiments/<name>.py, each with the command that
runs it in its docstring; dey2025, CompleteP's claims, reads the coordinate check's jobs), and the
initialization atlas (atlas: every placement probed at init, no claims; `lnscope report` renders it
in its own section) and the coordinate check (coordcheck: activation RMS and its change over the
first training steps across widths and depths, µP's standard plot, no claims). A claim
names its experiment, the parts of its frame it reads, a statistic, a threshold and a direction
(analysis.experiments.claims); `check` turns it into a verdict with a bootstrap interval over seeds.
Imports from the rooms below it only (models, probe, train, the plotting room analysis.plot: loaded
when a figure is drawn); tests/test_import_graph.py holds the order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from analysis.experiments import (
    atlas,
    coordcheck,
    deepnorm_admin,
    dey2025,
    kedia2024,
    liu2021,
    ngpt2024,
    peri_olmo2,
    sun2025,
    takase2022,
    xie2023,
    xiong2020,
    xu2019,
)
from analysis.experiments.claims import N_BOOT, PAPERS, CheckResult, Claim, Superseded, check
from analysis.experiments.experiment import HARNESSES, PRESET_NAMES, Experiment, Harness
from analysis.experiments.runs import compute_jobs

EXPERIMENTS: dict[str, Experiment] = {
    m.EXPERIMENT.name: m.EXPERIMENT
    for m in (
        *(takase2022, xie2023, xiong2020, liu2021, xu2019, deepnorm_admin),
        *(sun2025, kedia2024, peri_olmo2, dey2025, ngpt2024, atlas, coordcheck),
    )
}
CLAIMS: dict[str, Claim] = {c.id: c for e in EXPERIMENTS.values() for c in e.claims}
# Claims replaced by restatements (analysis.experiments.claims.Superseded): listed, never checked.
SUPERSEDED: dict[str, Superseded] = {
    s.id: s
    for m in (takase2022, xie2023, xiong2020, liu2021, xu2019, deepnorm_admin)
    for s in getattr(m, "SUPERSEDED", ())
}


def select_claims(
    *, papers: Iterable[str] | None = None, claim_ids: Iterable[str] | None = None, when: Iterable[str] | None = None
) -> list[Claim]:
    """The claims of `papers` (all when None), narrowed to `claim_ids` and to `when` ("init", "training")."""
    papers = None if papers is None else list(papers)
    claim_ids = None if claim_ids is None else list(claim_ids)
    if papers is not None:
        unknown = [p for p in papers if p not in PAPERS]
        if unknown:
            raise ValueError(f"unknown paper(s) {unknown}; valid choices: {', '.join(PAPERS)}")
    if claim_ids is not None:
        replaced = [SUPERSEDED[c].line() for c in claim_ids if c in SUPERSEDED]
        if replaced:
            raise ValueError("; ".join(replaced))
        unknown = [c for c in claim_ids if c not in CLAIMS]
        if unknown:
            raise ValueError(f"unknown claim id(s) {unknown}; valid ids: {', '.join(CLAIMS)}")
    chosen = [
        c
        for c in CLAIMS.values()
        if (papers is None or c.paper in papers)
        and (claim_ids is None or c.id in claim_ids)
        and (when is None or c.when in set(when))
    ]
    if not chosen:
        raise ValueError(f"no claim matches papers={papers}, claim_ids={claim_ids}, when={when}")
    return chosen


def collect(
    claims: Iterable[Claim],
    *,
    preset: str = "quick",
    store: Path | str | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> dict[str, pd.DataFrame]:
    """{experiment: its tidy frame} for the claims: each experiment runs once, only the parts its
    claims need (all parts if any claim needs all), reusing stored jobs when `store` is given.
    `workers`: processes computing the jobs (default $LNSCOPE_WORKERS, else 1; see compute_jobs)."""
    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown preset {preset!r}; valid choices: {', '.join(PRESET_NAMES)}")
    by_experiment: dict[str, list[Claim]] = {}
    for c in claims:
        by_experiment.setdefault(c.experiment, []).append(c)
    for name in by_experiment:
        EXPERIMENTS[name].preset(preset)  # fail before computing anything
    parts = {
        name: None if any(not c.needs for c in group) else sorted({p for c in group for p in c.needs})
        for name, group in by_experiment.items()
    }
    store = None if store is None else Path(store)
    # every job of every experiment first, on a pool of processes (analysis.experiments.runs.compute_jobs)
    compute_jobs(
        [j for name in parts for j in EXPERIMENTS[name].jobs(preset, parts[name])],
        store,
        workers=workers,
        progress=progress,
    )
    return {name: EXPERIMENTS[name].run(preset, store, parts=parts[name], progress=progress) for name in parts}


def run_checks(
    *,
    papers: Iterable[str] | None = None,
    claim_ids: Iterable[str] | None = None,
    preset: str = "quick",
    store: Path | str | None = None,
    when: Iterable[str] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    progress: bool = False,
    workers: int | None = None,
) -> pd.DataFrame:
    """Check the selected claims: one row per check (CheckResult's fields and `preset`).

    A wrong selection or preset is a ValueError before any compute. Verdicts are results: the call
    succeeds whatever they are.
    """
    chosen = select_claims(papers=papers, claim_ids=claim_ids, when=when)
    frames = collect(chosen, preset=preset, store=store, progress=progress, workers=workers)
    rows = [
        {**dataclasses.asdict(check(c, frames[c.experiment], n_boot=n_boot, seed=seed)), "preset": preset}
        for c in chosen
    ]
    return pd.DataFrame(rows)


__all__ = [
    "CLAIMS",
    "EXPERIMENTS",
    "HARNESSES",
    "SUPERSEDED",
    "CheckResult",
    "Claim",
    "Experiment",
    "Harness",
    "check",
    "collect",
    "run_checks",
    "select_claims",
]
