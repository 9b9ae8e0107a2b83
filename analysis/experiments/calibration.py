"""Calibration runs: an experiment's initialization jobs on seeds disjoint from those its checks read.

A claim with a `claims.Calibration` had its threshold set from its statistic measured on calibration
seeds (a rule with a margin, `claims.THRESHOLD_RULES`) before its check ran on the preset's own
seeds, so no verdict reads the run its threshold came from. `calibrate` reruns a claim's parts with
every initialization job moved to the calibration seeds and returns the check there: its
statistic and interval are what the record holds, and rerunning it reproduces the record.

    from analysis.experiments import CLAIMS
    from analysis.experiments.calibration import calibrate
    claim = CLAIMS["xie2023.residual_bottom_bounded_below"]
    calibrate(claim)                                    # the recorded seeds and preset
    calibrate(claim, first_seed=200, store="results")   # other calibration seeds, stored
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments import EXPERIMENTS
from analysis.experiments.claims import N_BOOT, CheckResult, Claim, check
from analysis.experiments.runs import InitJob, run_jobs
from analysis.probe.api import probe_at_init
from analysis.probe.probes import ProbeConfig


@dataclass(frozen=True)
class SeededInitJob:
    """`base` probed on seeds first_seed .. first_seed + base.seeds - 1 instead of 0 .. base.seeds - 1."""

    base: InitJob
    first_seed: int

    kind = "init"

    @property
    def variant(self) -> str:
        return self.base.variant

    @property
    def columns(self) -> tuple[tuple[str, Any], ...]:
        return self.base.columns

    def spec(self) -> dict[str, Any]:
        return {**self.base.spec(), "first_seed": self.first_seed}

    def compute(self) -> pd.DataFrame:
        b = self.base
        return probe_at_init(
            b.model,
            seeds=range(self.first_seed, self.first_seed + b.seeds),
            batch_size=b.batch_size,
            seq_len=b.seq_len,
            probe_config=ProbeConfig(probes=tuple(b.probes), output_change_lr=b.output_change_lr),
        )


def calibration_frame(
    experiment: str,
    parts: tuple[str, ...],
    *,
    first_seed: int,
    preset: str = "quick",
    variants: set[str] | None = None,
    store: Path | str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The tidy frame of `parts` of `experiment` at `preset` (only the jobs of `variants`, default all),
    every job moved to seeds from `first_seed` on.

    Raises ValueError for a part with training jobs (their seeds are the training plan's) or an unknown part.
    """
    exp = EXPERIMENTS[experiment]
    plan = exp.plan(exp.preset(preset))
    unknown = [p for p in parts if p not in plan]
    if unknown or not parts:
        raise ValueError(f"experiment {experiment!r}: unknown or no parts {unknown or parts}; valid: {', '.join(plan)}")
    frames = []
    for part in parts:
        jobs = [j for j in plan[part] if variants is None or j.variant in variants]
        if not jobs:
            continue
        if not all(isinstance(j, InitJob) for j in jobs):
            raise ValueError(f"{experiment}/{part}: only initialization parts can be calibrated here")
        moved = [SeededInitJob(j, first_seed) for j in jobs]
        frame = run_jobs(moved, None if store is None else Path(store), progress=progress, desc=f"{experiment}/{part}")
        frames.append(frame.assign(part=part))
    if not frames:
        raise ValueError(f"{experiment}: no jobs of the variants {sorted(variants or ())} in the parts {parts}")
    return pd.concat(frames, ignore_index=True)


def calibrate(
    claim: Claim,
    *,
    first_seed: int | None = None,
    preset: str | None = None,
    store: Path | str | None = None,
    n_boot: int = N_BOOT,
    progress: bool = False,
) -> CheckResult:
    """`claim` checked on a calibration run (default: the seeds and preset its Calibration records).

    The result's statistic and interval are the calibration's value and interval; its verdict is
    against the claim's current threshold.
    """
    cal = claim.calibration
    if first_seed is None or preset is None:
        if cal is None:
            raise ValueError(f"claim {claim.id!r} has no calibration record: give first_seed and preset")
        first_seed = min(cal.seeds) if first_seed is None else first_seed
        preset = cal.preset if preset is None else preset
    if not claim.needs:
        raise ValueError(f"claim {claim.id!r} names no parts (needs); calibrate reads only what a claim needs")
    frame = calibration_frame(
        claim.experiment,
        claim.needs,
        first_seed=first_seed,
        preset=preset,
        variants=_variants(claim),
        store=store,
        progress=progress,
    )
    return check(claim, frame, n_boot=n_boot)


def _variants(claim: Claim) -> set[str] | None:
    """The variants the claim's features select (None: some feature reads every variant)."""
    out: set[str] = set()
    for f in claim.statistic.features:
        want = f.where.get("variant")
        if want is None:
            return None
        out |= set(want) if isinstance(want, (list, tuple, set)) else {want}
    return out
