"""An experiment: one paper's reproduction as presets, a plan of jobs, figures and claims.

    exp = EXPERIMENTS["takase2022"]
    frame = exp.run("quick", store=Path("results"))      # tidy rows; stored jobs are reused
    figs = exp.figures(frame)                             # {name: matplotlib Figure}
    [check(c, frame) for c in exp.claims]

A plan maps a preset to named *parts*, each a list of jobs (analysis.experiments.runs). Every row of
the frame carries its `part`, `variant` (the placement and the form of the method), `job` (the hash of
what was computed) and the job's extra columns; claims name the parts they read (`Claim.needs`), so a
check of one claim runs only what that claim needs.

Presets: "quick" (the 2-core CPU, minutes: the calibration harness, reduced width, depth kept where depth
is the claim), "paper" (the papers' sizes, for a GPU) and "tiny" (the test suite's end-to-end runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments.claims import Claim
from analysis.experiments.runs import InitJob, Job, run_jobs
from models import ModelConfig

PRESET_NAMES = ("tiny", "quick", "paper")


@dataclass(frozen=True)
class Harness:
    """Model widths and the random-token batch of initialization-time runs.

    "quick" is the calibration harness: the sizes of the earlier calibration run around whose
    measurements (3 seeds) the pre-registered thresholds were set with 2-3x margins: d_model 64,
    4 heads, FFN 256 (ReLU), vocabulary 128, sequence length 32, batch 8, Xavier-uniform projections,
    unit-variance token inputs, no biases, no dropout, no positional encoding (pos="none" was the
    closer match to the calibration's numbers, tests/analysis/probe/test_calibration.py), and 8 seeds (the
    calibration averaged 3; more seeds only narrow the intervals).

    `pos`, `init` and `activation` are the harness choices a claim's verdict may depend on; the
    robustness sweep (analysis.experiments.robustness) varies them, and d_model, one grid point each.
    """

    d_model: int
    heads: int
    d_ff: int
    vocab: int
    seq_len: int
    batch_size: int
    seeds: int
    pos: str = "none"
    init: str = "xavier_uniform"
    activation: str = "relu"

    def model(self, arch: str, placement: str, layers: int, **fields: Any) -> ModelConfig:
        """A ModelConfig of this harness (extra ModelConfig fields as keywords)."""
        return ModelConfig(
            arch=arch,
            placement=placement,
            layers=layers,
            d_model=self.d_model,
            heads=self.heads,
            d_ff=self.d_ff,
            vocab=self.vocab,
            max_len=self.seq_len,
            pos=self.pos,
            init=self.init,
            activation=self.activation,
            **fields,
        )

    def init_job(
        self,
        variant: str,
        probes: tuple[str, ...],
        arch: str,
        placement: str,
        layers: int,
        *,
        columns: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> InitJob:
        """An InitJob probing this harness's model over its seeds."""
        return InitJob(
            variant=variant,
            model=self.model(arch, placement, layers, **fields),
            seeds=self.seeds,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            probes=probes,
            columns=tuple((columns or {}).items()),
        )


HARNESSES: dict[str, Harness] = {
    # The test suite's end-to-end runs: narrow, short, 3 seeds (the minimum for a spread).
    "tiny": Harness(d_model=32, heads=4, d_ff=128, vocab=64, seq_len=16, batch_size=4, seeds=3),
    "quick": Harness(d_model=64, heads=4, d_ff=256, vocab=128, seq_len=32, batch_size=8, seeds=8),
    # transformer_wmt_en_de (Takase, Xie's WMT runs, Xiong's and Admin's base): d 512, 8 heads, FFN
    # 2048; a 32k joint-BPE-sized vocabulary; 64 sentences of 64 tokens.
    "paper": Harness(d_model=512, heads=8, d_ff=2048, vocab=32768, seq_len=64, batch_size=64, seeds=8),
}


@dataclass(frozen=True)
class Experiment:
    """One paper's reproduction.

    Attributes:
        name: registry key (also the module name), e.g. "takase2022".
        paper: citation.
        title: one line.
        summary: what is run, in words, and how the task and sizes were chosen.
        command: the shell command that runs it.
        presets: {"tiny" | "quick" | "paper": preset object the plan reads}.
        plan: preset object -> {part: [job, ...]}.
        figures: tidy frame -> {name: Figure}; may draw only the parts present.
        claims: the paper's claims this experiment's frame can check.
    """

    name: str
    paper: str
    title: str
    summary: str
    command: str
    presets: Mapping[str, Any]
    plan: Callable[[Any], Mapping[str, Sequence[Job]]]
    figures: Callable[[pd.DataFrame], dict[str, Any]]
    claims: tuple[Claim, ...]

    def __post_init__(self) -> None:
        missing = [p for p in ("quick", "paper") if p not in self.presets]
        unknown = [p for p in self.presets if p not in PRESET_NAMES]
        if missing or unknown:
            raise ValueError(
                f"experiment {self.name!r}: presets need 'quick' and 'paper' (missing {missing}) and "
                f"must be among {PRESET_NAMES} (unknown {unknown})"
            )
        for claim in self.claims:
            if claim.experiment != self.name:
                raise ValueError(f"claim {claim.id!r} names experiment {claim.experiment!r}, but sits in {self.name!r}")

    def preset(self, name: str) -> Any:
        """The preset object called `name`, or a ValueError listing the valid ones."""
        if name not in self.presets:
            raise ValueError(f"experiment {self.name!r} has no preset {name!r}; valid: {', '.join(self.presets)}")
        return self.presets[name]

    def parts(self, preset: str = "quick") -> tuple[str, ...]:
        return tuple(self.plan(self.preset(preset)))

    def run(
        self,
        preset: str = "quick",
        store: Path | None = None,
        *,
        parts: Iterable[str] | None = None,
        progress: bool = False,
    ) -> pd.DataFrame:
        """The tidy frame of `preset` (every part, or the named `parts`), reusing stored jobs.

        Columns: analysis.probe.tidy's COLUMNS (or a training frame's), plus `part`, `variant`, `job`
        and the jobs' extra columns.
        """
        plan = self._chosen(preset, parts)
        frames = [
            run_jobs(jobs, store, progress=progress, desc=f"{self.name}/{p}").assign(part=p) for p, jobs in plan.items()
        ]
        return pd.concat(frames, ignore_index=True)

    def jobs(self, preset: str = "quick", parts: Iterable[str] | None = None) -> list[Job]:
        """Every job `run(preset, parts=parts)` reads, for `compute_jobs` to compute ahead on a pool."""
        return [job for jobs in self._chosen(preset, parts).values() for job in jobs]

    def _chosen(self, preset: str, parts: Iterable[str] | None) -> dict[str, Sequence[Job]]:
        plan = self.plan(self.preset(preset))
        chosen = list(plan) if parts is None else list(dict.fromkeys(parts))
        unknown = [p for p in chosen if p not in plan]
        if unknown or not chosen:
            raise ValueError(
                f"experiment {self.name!r}: unknown or no parts {unknown or chosen}; valid: {', '.join(plan)}"
            )
        return {p: plan[p] for p in chosen}

    def save_figures(self, frame: pd.DataFrame, folder: Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
        """Draw `figures(frame)` and write each as `folder/<name>.<format>` (atomic writes)."""
        from analysis.plot.figures import save_figure  # lazy: matplotlib only to draw, so `lnscope --help` starts fast

        paths = []
        for name, fig in self.figures(frame).items():
            for i, fmt in enumerate(formats):
                paths.append(save_figure(fig, Path(folder) / f"{name}.{fmt}", close=i == len(formats) - 1))
        return paths
