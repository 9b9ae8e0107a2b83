"""Claims files: your own hypotheses as data, checked exactly like the built-in claims.

    lnscope check --claims my_claims.toml             # the same table, verdicts and --out JSON

    from analysis.experiments.claimsfile import load_claims, claim_frames, plot_check
    claims = load_claims("my_claims.toml")            # list[Claim]; every bad field named first
    frames = claim_frames(claims, preset="quick")     # {claim.experiment: tidy frame}
    results = [check(c, frames[c.experiment]) for c in claims]
    plot_check(results[0], ax)                        # statistic, 95% interval, threshold

A claims file is TOML (docs/experiments.md, "Claims files"; an example: docs/examples/my_claims.toml):

    [papers]                                  # papers of your own: key = "citation"
    mine2026 = "Me and You 2026, a lab notebook"

    [[claim]]
    id = "mine2026.post_top_gradient"         # "<paper>.<name>"; paper defaults to the id's prefix
    source = "notebook 06"                    # where the claim comes from
    statement = "Post-LN's top decoder layer gets 10x the gradient of its bottom one"
    experiment = "takase2022"                 # a built-in experiment's frame, OR
    # runs = "{store}/runs"                   # a folder of your training runs / a sweep's --out, OR
    # probes = ["post.parquet"]               # outputs of `lnscope probe`
    statistic = "ratio"                       # a statistic kind: STATISTICS' keys
    threshold = 10.0                          # [low, high] for direction "in"
    direction = ">="
    threshold_note = "mine, set before looking"
    features = [                              # filters on the tidy columns (+ layer, transform)
      { name = "top", where = { variant = "post", quantity = "act_grad_norm", site = "resid_pre" }, layer = -1 },
      { name = "bottom", where = { variant = "post", quantity = "act_grad_norm", site = "resid_pre" }, layer = 0 },
    ]

Optional claim keys: paper, method_form, description (the statistic in words), needs (the
experiment's parts the claim reads), when ("init"/"training"; default "training" for runs, else
"init"), log (profile_slope: fit ln of the profile, default true). A feature's keys: name, where,
layer (an int, negative from the top, or "all"), transform (claims.TRANSFORMS), depth (depth_slope's
x value). Paths are relative to the working directory; "{store}" stands for the store folder
(analysis.options.default_store, or --store).

A claim on `runs` reads `runs_frame(folder)`: every finished run's probe rows, its curves (stack
"model", layer -1, site "curve"; quantity loss, lr, grad_norm, update_ratio or val_loss) and per seed
"final_val_loss" (its last validation loss; +inf for a diverged seed, as the built-in training
claims count a divergence against the run), each row with the run's config columns (placement, lr,
..., and every config field the runs differ in, dotted: "optim.lr") and `phase` ("init" at step 0,
"final" at the run's last step). A claim on `probes` reads the files' rows, `run` = each file's stem.

Every problem of a file is found before anything is computed or read, and reported together, one
line each, naming the claim, the field and the valid choices (`ClaimsFileError`).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.experiments import EXPERIMENTS, collect
from analysis.experiments.claims import (
    DIRECTIONS,
    PAPERS,
    TRANSFORMS,
    WHEN,
    CheckResult,
    Claim,
    Feature,
    Statistic,
    closer_to_one,
    depth_slope,
    difference,
    extreme,
    extreme_ratio,
    max_abs_difference,
    profile_r2,
    profile_slope,
    ratio,
    value,
)
from analysis.io import read_run
from analysis.options import default_store
from analysis.train.store import RUN_JSON, load_runs
from models.config import unknown_choice

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Where a claim's frame comes from: exactly one of these keys per claim.
SOURCES = ("experiment", "runs", "probes")
FILE_KEYS = ("papers", "claim")
REQUIRED_KEYS = ("id", "source", "statement", "statistic", "features", "threshold", "direction", "threshold_note")
OPTIONAL_KEYS = ("paper", "method_form", "description", "needs", "when", "log")
CLAIM_KEYS = (*REQUIRED_KEYS, *OPTIONAL_KEYS, *SOURCES)
FEATURE_KEYS = ("name", "where", "layer", "transform", "depth")


@dataclass(frozen=True)
class StatisticKind:
    """A statistic constructor of analysis.experiments.claims, by the name a claims file gives.

    Attributes:
        features: how many features it takes, in words ("1", "2", "4", "2 or more", "pairs").
        accepts: count -> whether that many features fit.
        build: (features, description, options) -> the Statistic.
    """

    features: str
    accepts: Callable[[int], bool]
    build: Callable[[list[Feature], str, Mapping[str, Any]], Statistic]


def _depths(fs: list[Feature], description: str, options: Mapping[str, Any]) -> Statistic:
    return depth_slope(dict(zip(options["depths"], fs)), description)


STATISTICS: dict[str, StatisticKind] = {
    "value": StatisticKind("1", lambda n: n == 1, lambda fs, d, o: value(fs[0], d)),
    "ratio": StatisticKind("2 (numerator, denominator)", lambda n: n == 2, lambda fs, d, o: ratio(*fs, d)),
    "difference": StatisticKind("2 (a, b: a - b)", lambda n: n == 2, lambda fs, d, o: difference(*fs, d)),
    "profile_slope": StatisticKind(
        "1 (layer = 'all')", lambda n: n == 1, lambda fs, d, o: profile_slope(fs[0], d, log=o.get("log", True))
    ),
    "profile_r2": StatisticKind("1 (layer = 'all')", lambda n: n == 1, lambda fs, d, o: profile_r2(fs[0], d)),
    "depth_slope": StatisticKind("2 or more (each with a depth)", lambda n: n >= 2, _depths),
    "max": StatisticKind("1 or more", lambda n: n >= 1, lambda fs, d, o: extreme(tuple(fs), "max", d)),
    "min": StatisticKind("1 or more", lambda n: n >= 1, lambda fs, d, o: extreme(tuple(fs), "min", d)),
    "max_ratio": StatisticKind(
        "pairs (a1, b1, a2, b2, ...)",
        lambda n: n >= 2 and n % 2 == 0,
        lambda fs, d, o: extreme_ratio(tuple(zip(fs[::2], fs[1::2])), "max", d),
    ),
    "min_ratio": StatisticKind(
        "pairs (a1, b1, a2, b2, ...)",
        lambda n: n >= 2 and n % 2 == 0,
        lambda fs, d, o: extreme_ratio(tuple(zip(fs[::2], fs[1::2])), "min", d),
    ),
    "closer_to_one": StatisticKind(
        "4 (a numerator, a denominator, b numerator, b denominator)",
        lambda n: n == 4,
        lambda fs, d, o: closer_to_one((fs[0], fs[1]), (fs[2], fs[3]), d),
    ),
    "max_abs_difference": StatisticKind(
        "2 (two profiles)", lambda n: n == 2, lambda fs, d, o: max_abs_difference(*fs, d)
    ),
}


class ClaimsFileError(ValueError):
    """Every problem of a claims file, one line each (file, claim, field, what is valid)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def _named(value: Any, choices: Mapping[str, Any]) -> bool:
    """Whether a TOML value is one of the registry's names (an array or table is not: never a lookup
    that raises instead of naming the problem)."""
    return isinstance(value, str) and value in choices


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Reader:
    """Collects the problems of one file instead of stopping at the first."""

    def __init__(self, path: Path, store: Path):
        self.path, self.store, self.problems = path, store, []

    def problem(self, where: str, text: str) -> None:
        self.problems.append(f"{self.path}: {where}: {text}")

    def unknown_keys(self, where: str, table: Mapping[str, Any], valid: Iterable[str], what: str) -> None:
        for key in table:
            if key not in valid:
                self.problem(where, unknown_choice(what, key, valid))

    def feature(self, where: str, data: Any, index: int, stat: str) -> Feature | None:
        here = f"{where}: features[{index}]"
        if not isinstance(data, Mapping):
            self.problem(here, f"must be a table with keys {', '.join(FEATURE_KEYS)}, got {data!r}")
            return None
        self.unknown_keys(here, data, FEATURE_KEYS, "feature key")
        name, filters = data.get("name"), data.get("where")
        ok = True
        if not isinstance(name, str) or not name:
            self.problem(here, f"name must be a non-empty string, got {name!r}")
            ok = False
        if not isinstance(filters, Mapping) or not filters:
            self.problem(
                here, f"where must be a table of column filters, e.g. {{ quantity = 'val_loss' }}, got {filters!r}"
            )
            ok = False
        layer = data.get("layer")
        if not (layer is None or layer == "all" or (isinstance(layer, int) and not isinstance(layer, bool))):
            self.problem(here, f"layer must be an int (negative: from the top) or 'all', got {layer!r}")
            ok = False
        transform = data.get("transform", "identity")
        if not _named(transform, TRANSFORMS):
            self.problem(here, unknown_choice("transform", transform, TRANSFORMS))
            ok = False
        if stat == "depth_slope" and not (isinstance(data.get("depth"), int) and data["depth"] > 0):
            self.problem(here, f"depth_slope needs depth = a positive int per feature, got {data.get('depth')!r}")
            ok = False
        if not ok:
            return None
        return Feature(name, dict(filters), layer=layer, transform=transform)

    def source(self, where: str, data: Mapping[str, Any]) -> tuple[str, str] | None:
        """(Claim.experiment, default when) of the claim's one source key."""
        given = [k for k in SOURCES if k in data]
        if len(given) != 1:
            self.problem(where, f"give exactly one of {', '.join(SOURCES)}; got {given or 'none'}")
            return None
        key, target = given[0], data[given[0]]
        if key == "experiment":
            if not _named(target, EXPERIMENTS):
                self.problem(where, unknown_choice("experiment", target, EXPERIMENTS))
                return None
            return target, "init"
        paths = [target] if isinstance(target, str) else target
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
            self.problem(where, f"{key} must be a path (or a list of paths for probes), got {target!r}")
            return None
        resolved = [Path(p.replace("{store}", str(self.store))) for p in paths]
        if key == "runs":
            if len(resolved) != 1:
                self.problem(where, f"runs must be one folder (a store or a sweep's --out), got {target!r}")
                return None
            folder = resolved[0]
            if not (folder / RUN_JSON).exists() and not any(folder.glob(f"*/{RUN_JSON}")):
                self.problem(where, f"runs: no finished training run in {str(folder)!r} (no */{RUN_JSON})")
                return None
            return f"runs:{folder}", "training"
        bad = [str(p) for p in resolved if p.suffix != ".parquet" or not p.is_file()]
        if bad:
            self.problem(where, f"probes: not an existing .parquet file (an `lnscope probe --out`): {bad}")
            return None
        return "probes:" + ",".join(str(p) for p in resolved), "init"

    def claim(self, index: int, data: Any, papers: Mapping[str, str]) -> Claim | None:
        claim_id = data.get("id") if isinstance(data, Mapping) else None
        where = f"claim {index + 1}" + (f" ({claim_id})" if isinstance(claim_id, str) else "")
        if not isinstance(data, Mapping):
            self.problem(where, "must be a table ([[claim]])")
            return None
        start = len(self.problems)
        self.unknown_keys(where, data, CLAIM_KEYS, "claim key")
        for key in REQUIRED_KEYS:
            if key not in data:
                self.problem(where, f"{key} is missing (required: {', '.join(REQUIRED_KEYS)})")
        for key in ("id", "source", "statement", "threshold_note", "method_form", "description"):
            if key in data and not isinstance(data[key], str):
                self.problem(where, f"{key} must be a string, got {data[key]!r}")
        paper = data.get("paper", claim_id.split(".")[0] if isinstance(claim_id, str) else None)
        if isinstance(claim_id, str) and not re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]+", claim_id):
            self.problem(where, f"id must be '<paper>.<name>', got {claim_id!r}")
        if not (_named(paper, PAPERS) or _named(paper, papers)):
            known = [*PAPERS, *papers]
            self.problem(
                where,
                unknown_choice("paper", paper, known) + f"; declare your own under [papers]: {paper} = 'citation'",
            )
        if isinstance(claim_id, str) and isinstance(paper, str) and not claim_id.startswith(f"{paper}."):
            self.problem(where, f"id {claim_id!r} must start with its paper, '{paper}.'")
        stat = data.get("statistic")
        if "statistic" in data and not _named(stat, STATISTICS):
            self.problem(where, unknown_choice("statistic", stat, STATISTICS))
        direction = data.get("direction")
        if "direction" in data and direction not in DIRECTIONS:
            self.problem(where, unknown_choice("direction", direction, DIRECTIONS))
        threshold = data.get("threshold")
        if direction == "in":
            if not (isinstance(threshold, list) and len(threshold) == 2 and all(map(_is_number, threshold))):
                self.problem(where, f"threshold: direction 'in' needs [low, high], got {threshold!r}")
            elif threshold[0] >= threshold[1]:
                self.problem(where, f"threshold: [low, high] needs low < high, got {threshold!r}")
            else:
                threshold = (float(threshold[0]), float(threshold[1]))
        elif direction in DIRECTIONS and "threshold" in data and not _is_number(threshold):
            self.problem(where, f"threshold: direction {direction!r} needs a finite number, got {threshold!r}")
        when = data.get("when")
        if when is not None and when not in WHEN:
            self.problem(where, unknown_choice("when", when, WHEN))
        needs = data.get("needs", [])
        if not (isinstance(needs, list) and all(isinstance(n, str) for n in needs)):
            self.problem(where, f"needs must be a list of the experiment's part names, got {needs!r}")
        if "log" in data and not isinstance(data["log"], bool):
            self.problem(where, f"log must be true or false, got {data['log']!r}")
        source = self.source(where, data)
        if source is not None and needs and not source[0].startswith(("runs:", "probes:")):
            parts = EXPERIMENTS[source[0]].parts("quick")
            for part in needs:
                if part not in parts:
                    self.problem(where, unknown_choice(f"part of {source[0]} in needs", part, parts))
        raw = data.get("features")
        features: list[Feature] = []
        if "features" in data:
            if not isinstance(raw, list) or not raw:
                self.problem(where, f"features must be a list of tables, got {raw!r}")
            else:
                made = [self.feature(where, f, i, stat) for i, f in enumerate(raw)]
                features = [f for f in made if f is not None]
                if _named(stat, STATISTICS) and not STATISTICS[stat].accepts(len(raw)):
                    self.problem(
                        where, f"statistic {stat!r} takes {STATISTICS[stat].features} features, got {len(raw)}"
                    )
        if len(self.problems) > start:
            return None
        description = data.get("description") or f"{stat} of " + ", ".join(f.describe() for f in features)
        options = {"log": data.get("log", True), "depths": [f.get("depth") for f in raw]}
        try:
            statistic = STATISTICS[stat].build(features, description, options)
            return Claim(
                id=claim_id,
                paper=paper,
                source=data["source"],
                statement=data["statement"],
                method_form=data.get("method_form", ""),
                experiment=source[0],
                statistic=statistic,
                threshold=threshold if direction == "in" else float(threshold),
                direction=direction,
                threshold_note=data["threshold_note"],
                needs=tuple(needs),
                when=when or source[1],
                citation=papers.get(paper, ""),
            )
        except ValueError as err:  # the constructors' own checks (e.g. profile_slope needs layer 'all')
            self.problem(where, str(err))
            return None


def load_claims(path: Path | str, *, store: Path | str | None = None) -> list[Claim]:
    """The claims of a claims file (module docstring), validated before anything is computed.

    `store` is what "{store}" in a path stands for (default: analysis.options.default_store()).
    Raises ClaimsFileError (a ValueError) listing every problem, one line each.
    """
    path = Path(path)
    if path.suffix != ".toml":
        raise ClaimsFileError([f"{path}: a claims file must be a .toml file"])
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ClaimsFileError([f"{path}: cannot be read: {err}"]) from None
    except tomllib.TOMLDecodeError as err:
        raise ClaimsFileError([f"{path}: not valid TOML: {err}"]) from None
    reader = _Reader(path, Path(store) if store is not None else default_store())
    reader.unknown_keys("top level", data, FILE_KEYS, "key")
    papers = data.get("papers", {})
    if not isinstance(papers, Mapping):
        reader.problem("papers", f"must be a table of key = 'citation', got {papers!r}")
        papers = {}
    for key, citation in papers.items():
        if key in PAPERS:
            reader.problem(f"papers.{key}", f"{key!r} is a built-in paper ({PAPERS[key]}); pick another key")
        elif not isinstance(citation, str) or not citation.strip():
            reader.problem(f"papers.{key}", f"the citation must be a non-empty string, got {citation!r}")
    entries = data.get("claim", [])
    if not isinstance(entries, list) or not entries:
        reader.problem("claim", "no claims: add at least one [[claim]] table")
        entries = []
    claims = [reader.claim(i, entry, papers) for i, entry in enumerate(entries)]
    ids = [c.id for c in claims if c is not None]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        reader.problem(f"claim {dup}", "the id repeats; ids must be unique")
    if reader.problems:
        raise ClaimsFileError(reader.problems)
    return [c for c in claims if c is not None]


# ---------------------------------------------------------------------------------------------
# The frames a claims file's claims read.
# ---------------------------------------------------------------------------------------------
def runs_frame(folder: Path | str) -> pd.DataFrame:
    """The tidy frame of the finished training runs under `folder` (module docstring): probe rows,
    curve rows and per-seed final_val_loss, with the runs' config columns and `phase`."""
    folder = Path(folder)
    curves = load_runs(folder, "curves")
    if curves.empty:
        raise ValueError(f"no finished training run under {str(folder)!r}")
    probes = load_runs(folder, "probes")
    # site "curve": the probes record the loss of their own batch as stack "model", site "loss" too
    rows = curves.assign(stack="model", layer=-1, site="curve", other_layer=-1)
    val = rows[rows["quantity"] == "val_loss"].sort_values("step", kind="stable")
    last = val.groupby(["run", "seed"]).tail(1)  # tail, not last(): a NaN last evaluation stays NaN
    final = last.assign(
        quantity="final_val_loss",
        step=last["steps"],
        value=np.where(last["status"] == "diverged", np.inf, last["value"].to_numpy(float)),
    )
    frame = pd.concat([probes, rows, final], ignore_index=True)
    frame["phase"] = np.where(frame["step"] == 0, "init", np.where(frame["step"] == frame["steps"], "final", ""))
    return frame


def probes_frame(paths: Iterable[Path | str]) -> pd.DataFrame:
    """The rows of `lnscope probe` outputs, one file after the other (`run`: each file's run name)."""
    frames = [read_run(Path(p))[0] for p in paths]
    if not frames:
        raise ValueError("probes_frame: no files given")
    return pd.concat(frames, ignore_index=True)


def claim_frames(
    claims: Iterable[Claim],
    *,
    preset: str = "quick",
    store: Path | str | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> dict[str, pd.DataFrame]:
    """{claim.experiment: the frame it reads}: training runs and probe files are read first (and
    every claim on them selected from its frame: ClaimsFileError names each filter that selects
    nothing, with the values available), then the built-in experiments run once (`collect`, reusing
    the store)."""
    claims = list(claims)
    builtin = [c for c in claims if not c.experiment.startswith(("runs:", "probes:"))]
    frames: dict[str, pd.DataFrame] = {}
    problems = []
    for c in claims:
        if c in builtin:
            continue
        kind, _, target = c.experiment.partition(":")
        if c.experiment not in frames:
            frames[c.experiment] = runs_frame(target) if kind == "runs" else probes_frame(target.split(","))
        try:  # read, not computed: a filter that selects nothing is named before any experiment runs
            c.statistic.table(frames[c.experiment])
        except ValueError as err:
            problems.append(f"claim {c.id}: {err}")
    if problems:
        raise ClaimsFileError(problems)
    if builtin:
        frames.update(collect(builtin, preset=preset, store=store, progress=progress, workers=workers))
    return frames


# ---------------------------------------------------------------------------------------------
# A check, drawn.
# ---------------------------------------------------------------------------------------------
VERDICT_COLORS = {"reproduced": "#1b7f3b", "not reproduced": "#b3261e", "inconclusive": "#a36b00"}


def _field(result: CheckResult | Mapping[str, Any], name: str) -> Any:
    return result[name] if isinstance(result, Mapping) else getattr(result, name)


def plot_check(result: CheckResult | Mapping[str, Any], ax: Axes, *, title: str | None = None) -> Axes:
    """Draw one check on `ax`: the statistic (dot) with its 95% bootstrap interval over seeds (bar),
    the threshold (dashed line, or the claimed interval shaded for direction "in") and the claim's
    side of it (lightly shaded), colored by the verdict. A log x axis when every drawn value is
    positive and they span more than a decade. `result`: a CheckResult or its `to_json()` dict."""
    from analysis.plot.figures import log_axis, spans_decades  # lazy: matplotlib only to draw

    get = lambda name: _field(result, name)  # noqa: E731
    num = lambda v: math.nan if v is None else float(v)  # noqa: E731 - JSON has null for NaN
    point, low, high = num(get("statistic")), num(get("ci_low")), num(get("ci_high"))
    threshold, direction, verdict = get("threshold"), get("direction"), get("verdict")
    bounds = [float(t) for t in threshold] if isinstance(threshold, (list, tuple)) else [float(threshold)]
    color = VERDICT_COLORS.get(verdict, "#444444")
    if spans_decades([point, low, high, *bounds]):
        log_axis(ax.xaxis)
    if math.isfinite(low) and math.isfinite(high):
        ax.errorbar(
            [point],
            [0],
            xerr=[[point - low], [high - point]],
            fmt="o",
            color=color,
            ms=7,
            capsize=5,
            lw=2,
            label=f"statistic, 95% interval over {get('n_seeds')} seeds",
        )
    elif math.isfinite(point):
        ax.plot([point], [0], "o", color=color, ms=7, label=f"statistic ({get('n_seeds')} seeds, no interval)")
    if direction == "in":
        ax.axvspan(bounds[0], bounds[1], color="#2e7d32", alpha=0.12, lw=0, label="claimed interval")
        for b in bounds:
            ax.axvline(b, color="#333333", ls="--", lw=1.2)
    else:
        ax.axvline(bounds[0], color="#333333", ls="--", lw=1.2, label=f"threshold ({direction} {bounds[0]:g})")
        ax.margins(x=0.12)  # the threshold off the frame's edge, so the claim's side shows
        ax.autoscale_view()
        lim = ax.get_xlim()
        side = (bounds[0], lim[1]) if direction == ">=" else (lim[0], bounds[0])
        ax.axvspan(*side, color="#2e7d32", alpha=0.08, lw=0, label="the claim's side")
        ax.set_xlim(lim)
    ax.set_yticks([])
    ax.set_ylim(-1, 1)
    description = str(get("statistic_description") or "statistic")
    ax.set_xlabel(description if len(description) <= 90 else description[:87] + "...")
    ax.set_title(title or f"{get('id')}: {verdict}", fontsize="medium", color=color, loc="left")
    ax.grid(True, axis="x", which="both", alpha=0.3, lw=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", borderaxespad=0.0)
    return ax


def plot_checks(results: Iterable[CheckResult | Mapping[str, Any]]) -> Figure:
    """One panel per check (`plot_check`), stacked: each has its own x axis (statistics differ in scale)."""
    from analysis.plot.figures import figure_grid  # lazy: matplotlib only to draw

    results = list(results)
    fig, axes = figure_grid(len(results), ncols=1, panel_size=(8.0, 1.9))
    for result, ax in zip(results, axes):
        plot_check(result, ax)
    return fig
