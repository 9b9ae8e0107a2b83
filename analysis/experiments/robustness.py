"""Verdict robustness: every initialization-time claim re-checked over a grid of harness choices.

A verdict is read at one harness (analysis.experiments.experiment.Harness: widths, positions, init,
activation). The papers' own harnesses differ from it (fairseq's init and sinusoidal positions,
d_model 512), so a verdict that flips with such a choice is a property of the harness, not of the
placement. `robustness` re-runs each claim's parts at every point of a grid (the product of its axes,
each point the preset's harness with some fields replaced) and checks the claim at each:

    from analysis.experiments import select_claims
    from analysis.experiments.robustness import robustness, summarize, plot_verdict_grid
    frame = robustness(select_claims(when=["init"]), preset="quick", store="results")
    summary = summarize(frame)      # one row per claim: holds k/n, flipped_by
    fig = plot_verdict_grid(frame)  # claims x grid points, coloured by verdict

A claim "holds" at a grid point when its verdict there equals its verdict at the preset's own harness
(the reference). A choice `axis=value` (value other than the reference's) *flips* it when the verdict
differs from the reference at every grid point with that choice; flipped points no single choice
explains are named by their combination of choices ("pos=sinusoidal & init=fairseq").

The d_model axis keeps the preset's d_ff/d_model ratio and its heads (they must divide the width).
Training-time claims are not swept (a grid of training runs is a study of its own).
`lnscope check --robustness` runs this (analysis.experiments.cli).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.experiments import EXPERIMENTS
from analysis.experiments.claims import N_BOOT, VERDICTS, Claim, check
from analysis.experiments.experiment import Harness
from analysis.experiments.runs import compute_jobs, run_jobs
from models.config import ACTIVATIONS, INITS, POSITIONS

# The grid of issue 24: the papers' code differs from the calibration harness in each of these.
DEFAULT_GRID: dict[str, tuple[Any, ...]] = {
    "pos": ("none", "sinusoidal"),
    "init": ("xavier_uniform", "fairseq"),
    "d_model": (64, 128),
}
# Harness fields a grid may vary, and their valid values (None: a positive multiple of `heads`).
AXES: dict[str, tuple[str, ...] | None] = {
    "pos": POSITIONS,
    "init": INITS,
    "activation": ACTIVATIONS,
    "d_model": None,
}
# Columns of the tidy robustness frame besides the grid's axes.
COLUMNS = ("claim", "experiment", "point", "reference", "statistic", "low", "high", "threshold", "verdict", "n_seeds")


def _check_grid(grid: Mapping[str, Sequence[Any]]) -> dict[str, tuple[Any, ...]]:
    if not grid:
        raise ValueError(f"empty robustness grid; axes: {', '.join(AXES)}")
    out = {}
    for axis, values in grid.items():
        if axis not in AXES:
            raise ValueError(f"unknown robustness axis {axis!r}; valid axes: {', '.join(AXES)}")
        values = tuple(values)
        if not values:
            raise ValueError(f"robustness axis {axis!r} has no values")
        valid = AXES[axis]
        for v in values:
            if valid is not None and v not in valid:
                raise ValueError(f"unknown {axis} {v!r} in the robustness grid; valid choices: {', '.join(valid)}")
            if valid is None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"robustness axis {axis!r}: values must be integers >= 1, got {v!r}")
        out[axis] = values
    return out


def harness_at(base: Harness, choice: Mapping[str, Any]) -> Harness:
    """`base` with the grid point's choices applied; a new d_model keeps base's d_ff/d_model ratio."""
    changes = dict(choice)
    if "d_model" in changes:
        d = int(changes["d_model"])
        if d % base.heads:
            raise ValueError(f"robustness grid: d_model={d} is not divisible by the harness's heads={base.heads}")
        changes["d_ff"] = max(1, round(base.d_ff * d / base.d_model))
    return dataclasses.replace(base, **changes)


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's axis values, the first axis slowest: [{axis: value}, ...]."""
    grid = _check_grid(grid)
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def point_label(choice: Mapping[str, Any]) -> str:
    """A grid point's label: "pos=none, init=fairseq, d_model=64"."""
    return ", ".join(f"{k}={v}" for k, v in choice.items())


def _frame(experiment: str, preset: Any, parts: Sequence[str], store: Path | None, progress: bool) -> pd.DataFrame:
    plan = EXPERIMENTS[experiment].plan(preset)
    frames = [run_jobs(plan[p], store, progress=progress, desc=f"{experiment}/{p}").assign(part=p) for p in parts]
    return pd.concat(frames, ignore_index=True)


def robustness(
    claims: Iterable[Claim],
    *,
    preset: str = "quick",
    grid: Mapping[str, Sequence[Any]] = DEFAULT_GRID,
    store: Path | str | None = None,
    presets: Mapping[str, Any] | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    progress: bool = False,
    workers: int | None = None,
) -> pd.DataFrame:
    """Check every init-time claim at the preset's harness (the reference) and at each grid point.

    Args:
        claims: the claims; training-time ones are a ValueError (they are not swept).
        preset: the experiments' preset whose harness the grid varies.
        grid: {axis: values}, axes among AXES (default DEFAULT_GRID).
        store: folder of stored jobs (reused by hash; the reference's jobs are the plain check's).
        presets: {experiment: preset object} replacing `preset`'s for those experiments (a test's
            smaller sizes); each must have a `harness` field.
        n_boot, seed: the bootstrap of `check`.
        progress, workers: as in analysis.experiments.collect.

    Returns:
        A tidy frame, one row per (claim, point): COLUMNS plus one column per grid axis. The reference
        row has point "reference" and reference=True; its axis columns hold the preset's own values.
    """
    claims = list(claims)
    grid = _check_grid(grid)
    training = [c.id for c in claims if c.when != "init"]
    if training:
        raise ValueError(f"robustness sweeps initialization-time claims only; training-time: {training}")
    if not claims:
        raise ValueError("robustness: no claims given")
    outside = [c.id for c in claims if c.experiment not in EXPERIMENTS and c.experiment not in (presets or {})]
    if outside:  # a claims file's own runs or probe outputs have no harness to vary
        raise ValueError(
            f"robustness varies a built-in experiment's harness; these claims read your own runs or probe "
            f"outputs: {outside}"
        )
    by_experiment: dict[str, list[Claim]] = {}
    for c in claims:
        by_experiment.setdefault(c.experiment, []).append(c)
    points = grid_points(grid)
    store = None if store is None else Path(store)
    plans = {}  # experiment -> [(label, choice, preset object)], the reference first
    for name in by_experiment:
        base = (presets or {}).get(name) or EXPERIMENTS[name].preset(preset)
        if not hasattr(base, "harness"):
            raise ValueError(f"robustness: experiment {name!r}'s preset has no harness to vary")
        reference = {axis: getattr(base.harness, axis) for axis in grid}
        plans[name] = [("reference", reference, base)] + [
            (point_label(p), p, dataclasses.replace(base, harness=harness_at(base.harness, p))) for p in points
        ]
    parts = {name: sorted({p for c in group for p in c.needs}) for name, group in by_experiment.items()}
    for name in by_experiment:
        plan = EXPERIMENTS[name].plan(plans[name][0][2])
        missing = [p for p in parts[name] if p not in plan]
        if missing or not parts[name]:
            raise ValueError(
                f"robustness: experiment {name!r} has no parts {missing or parts[name]}; valid: {list(plan)}"
            )
    # every job of every point first, on a pool of processes (as `collect` does)
    jobs = [
        job
        for name, entries in plans.items()
        for _, _, p in entries
        for part in parts[name]
        for job in EXPERIMENTS[name].plan(p)[part]
    ]
    compute_jobs(jobs, store, workers=workers, progress=progress)
    rows = []
    for name, entries in plans.items():
        for label, choice, p in entries:
            frame = _frame(name, p, parts[name], store, progress)
            for c in by_experiment[name]:
                r = check(c, frame, n_boot=n_boot, seed=seed)
                rows.append(
                    {
                        "claim": c.id,
                        "experiment": name,
                        "point": label,
                        "reference": label == "reference",
                        **choice,
                        "statistic": r.statistic,
                        "low": r.ci_low,
                        "high": r.ci_high,
                        "threshold": c.threshold_text(),
                        "verdict": r.verdict,
                        "n_seeds": r.n_seeds,
                    }
                )
    return pd.DataFrame(rows, columns=[*COLUMNS, *grid])


def axes_of(frame: pd.DataFrame) -> list[str]:
    """The grid axes of a robustness frame (its columns beyond COLUMNS)."""
    return [c for c in frame.columns if c not in COLUMNS]


def _flipped_by(points: pd.DataFrame, reference: Mapping[str, Any], axes: Sequence[str], verdict: str) -> list[str]:
    flips = points["verdict"] != verdict
    if not flips.any():
        return []
    found, explained = [], pd.Series(False, index=points.index)
    for axis in axes:
        for value in pd.unique(points[axis]):
            if value == reference[axis]:
                continue
            with_choice = points[axis] == value
            if flips[with_choice].all():
                found.append(f"{axis}={value}")
                explained |= with_choice
    for i in points.index[flips & ~explained]:
        changed = [f"{a}={points.at[i, a]}" for a in axes if points.at[i, a] != reference[a]]
        combo = " & ".join(changed) or points.at[i, "point"]
        if combo not in found:
            found.append(combo)
    return found


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per claim of a `robustness` frame: claim, reference_verdict, holds (grid points whose
    verdict equals the reference's), n (grid points), flipped_by (choices that flip it, see the module
    docstring), one count column per verdict, and `text` ("holds 8/8" or "holds 6/8; flipped by
    pos=sinusoidal"), the line a claims table shows next to the verdict."""
    axes = axes_of(frame)
    rows = []
    for claim, sel in frame.groupby("claim", sort=False):
        ref = sel[sel["reference"]].iloc[0]
        points = sel[~sel["reference"]]
        holds = int((points["verdict"] == ref["verdict"]).sum())
        flipped = _flipped_by(points, {a: ref[a] for a in axes}, axes, ref["verdict"])
        text = f"holds {holds}/{len(points)}" + (f"; flipped by {', '.join(flipped)}" if flipped else "")
        rows.append(
            {
                "claim": claim,
                "reference_verdict": ref["verdict"],
                "holds": holds,
                "n": len(points),
                "flipped_by": tuple(flipped),
                **{v: int((points["verdict"] == v).sum()) for v in VERDICTS},
                "text": text,
            }
        )
    return pd.DataFrame(rows)


def robustness_by_claim(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """{claim id: {"holds", "n", "flipped_by" (list), "reference_verdict", "text"}}: JSON-safe, for the
    report's claims table (one column: `text`)."""
    return {
        r["claim"]: {
            "holds": int(r["holds"]),
            "n": int(r["n"]),
            "flipped_by": list(r["flipped_by"]),
            "reference_verdict": r["reference_verdict"],
            "text": r["text"],
        }
        for r in summarize(frame).to_dict("records")
    }


def read_summary(path: Path | str) -> dict[str, dict[str, Any]]:
    """The `robustness_by_claim` summary of a `lnscope check --robustness --out FILE` JSON file: what a
    claims table reads to show "holds k/n; flipped by ..." next to each verdict (a claim absent from it
    was not swept)."""
    import json

    data = json.loads(Path(path).read_text())
    summary = data.get("summary") if isinstance(data, dict) else None
    entries_ok = isinstance(summary, dict) and all(
        isinstance(v, dict) and isinstance(v.get("text"), str) for v in summary.values()
    )
    if not entries_ok:  # read before a report computes anything: a bad file fails first
        raise ValueError(
            f"{path}: not a robustness file (a 'summary' of claims, each with its 'text'); "
            "write one with lnscope check --robustness --out FILE"
        )
    return summary


VERDICT_COLORS = {"reproduced": "#4c9a5b", "not reproduced": "#c2504a", "inconclusive": "#b9b9b9"}


def plot_verdict_grid(frame: pd.DataFrame, title: str = "Verdicts over harness choices") -> Any:
    """Claims (rows) x grid points (columns, the reference first), each cell coloured by its verdict;
    the row label ends with the claim's "holds k/n". Returns a matplotlib Figure."""
    import matplotlib.pyplot as plt  # lazy: matplotlib only to draw
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    summary = summarize(frame).set_index("claim")
    claims = list(summary.index)
    labels = list(dict.fromkeys(frame["point"]))
    codes = {v: i for i, v in enumerate(VERDICTS)}
    table = frame.pivot(index="claim", columns="point", values="verdict").loc[claims, labels]
    values = table.apply(lambda col: col.map(codes)).to_numpy(float)
    axes = axes_of(frame)
    first = frame.drop_duplicates("point").set_index("point")
    # one column per point, labelled by its values top-down in the order of the x-axis label
    ticks = [
        ("reference\n" if lab == "reference" else "") + "\n".join(str(first.at[lab, a]) for a in axes) for lab in labels
    ]
    fig, ax = plt.subplots(figsize=(2.5 + 0.8 * len(labels), 1.6 + 0.3 * len(claims)), constrained_layout=True)
    ax.imshow(
        values,
        cmap=ListedColormap([VERDICT_COLORS[v] for v in VERDICTS]),
        vmin=0,
        vmax=len(VERDICTS) - 1,
        aspect="auto",
    )
    ax.set_xticks(range(len(labels)), ticks, fontsize=6)
    ax.set_xlabel(" / ".join(axes), fontsize=7)
    ax.set_yticks(range(len(claims)), [f"{c}  ({summary.at[c, 'holds']}/{summary.at[c, 'n']})" for c in claims])
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xticks([i - 0.5 for i in range(1, len(labels))], minor=True)
    ax.set_yticks([i - 0.5 for i in range(1, len(claims))], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    ax.axvline(0.5, color="black", linewidth=1.5)  # the reference column (the preset's harness) on the left
    ax.set_title(title, fontsize=9)
    ax.legend(
        handles=[Patch(color=VERDICT_COLORS[v], label=v) for v in VERDICTS],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        frameon=False,
    )
    return fig


def robustness_command(
    claims: Sequence[Claim],
    *,
    preset: str,
    store: str | None,
    out: str,
    figures: str,
    n_boot: int,
    seed: int,
    quiet: bool,
    grid: Mapping[str, Sequence[Any]] = DEFAULT_GRID,
    presets: Mapping[str, Any] | None = None,
) -> int:
    """`lnscope check --robustness`: sweep the selection's init-time claims over `grid`, print one
    line per claim, write the grid and the summary as JSON (`out`) and the verdict grid (`figures`)."""
    import json

    from analysis.experiments.claims import json_safe
    from analysis.io import atomic_write

    chosen = [c for c in claims if c.when == "init"]
    if not chosen:
        raise ValueError("--robustness sweeps initialization-time claims; the selection has none (try --when init)")
    skipped = len(claims) - len(chosen)
    frame = robustness(
        chosen, preset=preset, grid=grid, store=store, presets=presets, n_boot=n_boot, seed=seed, progress=not quiet
    )
    summary = summarize(frame)
    width = max(len(c) for c in summary["claim"])
    axes = "; ".join(f"{axis} {'/'.join(map(str, values))}" for axis, values in grid.items())
    print(f"{'claim'.ljust(width)}  {'verdict'.ljust(14)}  robustness over {axes}")
    for r in summary.to_dict("records"):
        print(f"{r['claim'].ljust(width)}  {r['reference_verdict'].ljust(14)}  {r['text']}")
    flipped = int((summary["holds"] < summary["n"]).sum())
    print(f"\n{len(summary)} init-time claims ({preset} preset), {flipped} flipped by some harness choice")
    if skipped:
        print(f"({skipped} training-time claims not swept)")
    if out:
        payload = {
            "preset": preset,
            "grid": {k: list(v) for k, v in grid.items()},
            "points": [json_safe(r) for r in frame.to_dict("records")],
            "summary": robustness_by_claim(frame),
        }
        atomic_write(Path(out), lambda tmp: tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n"))
        print(f"wrote {out}")
    if figures:
        from analysis.plot.figures import save_figure

        fig = plot_verdict_grid(frame, title=f"Verdicts over harness choices ({preset} preset)")
        paths = [save_figure(fig, Path(figures) / f"robustness.{fmt}", close=fmt == "svg") for fmt in ("png", "svg")]
        print(f"wrote {', '.join(map(str, paths))}")
    return 0
