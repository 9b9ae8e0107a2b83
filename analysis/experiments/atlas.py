"""The initialization atlas: every placement probed at initialization, an experiment without claims.

Probes every placement on an 18-layer encoder-decoder and an 18-layer decoder-only stack (the
calibration harness of docs/calibration.md: d_model 64, 4 heads, FFN 256, random tokens, batch 8,
length 32, 3 seeds) and turns the tidy table into the atlas' figures and its summary table.
Registered like the papers' experiments (`analysis.experiments.EXPERIMENTS["atlas"]`); its jobs are
InitJobs computed and stored by analysis.experiments.runs. `lnscope report` renders it in its own
section, with the settings its options give (`atlas_experiment(settings)`); the study is stored
with a hash of its settings (`init_study`), so a report run again with the same settings reuses it.

    frame = EXPERIMENTS["atlas"].run("quick")      # 18 layers, 3 seeds, every placement
    table = summary_table(frame)                    # headline statistics per (arch, placement)
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.experiments.experiment import Experiment
from analysis.experiments.runs import InitJob, code_fingerprint, compute_jobs
from analysis.identity import content_id
from analysis.io import read_run, write_run
from analysis.probe.probes import CHEAP_PROBES
from analysis.stats import t_quantile
from models import PLACEMENTS, ModelConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "atlas"  # its key in analysis.experiments.EXPERIMENTS
ARCH_PANELS = (("encdec", "decoder", "decoder of an encoder-decoder"), ("decoder", "decoder", "decoder-only"))
FAMILY_TITLES = {
    "post": "norm on the stream (Post-LN family)",
    "pre": "un-normalized stream (Pre-LN family)",
    "none": "no norm",
}


# skip_scale at its default λ = 1 *is* Post-LN (it would hide the post line); the report shows λ = 2.
REPORT_OVERRIDES = {"skip_scale": {"skip_lambda": 2.0}}


def harness_config(arch: str, placement: str, layers: int) -> ModelConfig:
    """The calibration harness of docs/calibration.md (Xavier-uniform, unit-variance token inputs, no
    biases, no dropout)."""
    return ModelConfig(
        arch=arch,
        placement=placement,
        layers=layers,
        d_model=64,
        heads=4,
        d_ff=256,
        vocab=128,
        max_len=64,
        pos="none",
        **REPORT_OVERRIDES.get(placement, {}),
    )


def check_placements(placements: Sequence[str] | None) -> tuple[str, ...]:
    """The placements to report, in registry order; all of them for None."""
    if placements is None:
        return tuple(PLACEMENTS)
    unknown = [p for p in placements if p not in PLACEMENTS]
    if unknown or not placements:
        raise ValueError(f"placements {list(placements)}: unknown {unknown}; valid choices are {list(PLACEMENTS)}")
    return tuple(p for p in PLACEMENTS if p in placements)


def atlas_jobs(
    layers: int, seeds: int, placements: Sequence[str] | None = None, batch_size: int = 8, seq_len: int = 32
) -> list[InitJob]:
    """One InitJob per (arch, placement) of the atlas: the harness model probed over seeds 0..seeds-1."""
    return [
        InitJob(
            variant=placement,
            model=harness_config(arch, placement, layers),
            seeds=seeds,
            batch_size=batch_size,
            seq_len=seq_len,
            probes=CHEAP_PROBES,
        )
        for arch, _, _ in ARCH_PANELS
        for placement in check_placements(placements)
    ]


def _families(df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(family, its placements in the frame) for every family with a placement in the frame: a report
    of `--placements post,pre` has no panel for the families it did not ask for."""
    present = set(df["placement"])
    families = [(f, [n for n, p in PLACEMENTS.items() if p.family == f and n in present]) for f in FAMILY_TITLES]
    return [(f, members) for f, members in families if members]


ROW_NAMES = ("enc-dec", "decoder-only")  # ARCH_PANELS' rows, short, for legend notes


def _legend_below(column: Sequence, title: str) -> None:
    """One legend for a column of panels (the same placements in each), under its bottom panel, off
    the data. A label a panel annotated ("sandwich (≡ peri)": coinciding lines, or ≡ 0) keeps its note,
    naming the row when not every row has it."""
    from analysis.plot.figures import legend_below  # lazy: matplotlib only to draw

    bottom = column[-1]
    notes: dict[str, list[str]] = {}
    for row, ax in enumerate(column):
        for line in ax.get_lines():
            gid, label = line.get_gid() or "", line.get_label()
            name = gid[len("center:") :]
            if gid.startswith("center:") and label != name:
                notes.setdefault(name, []).append(f"{label[len(name) :].strip(' ()')}@{row}")
    handles, labels = [], []
    for line in bottom.get_lines():
        gid = line.get_gid() or ""
        if not gid.startswith("center:"):
            continue
        name = gid[len("center:") :]
        said = notes.get(name, [])
        if said:
            texts = {}
            for note in said:
                text, row = note.rsplit("@", 1)
                texts.setdefault(text, []).append(ROW_NAMES[int(row)] if int(row) < len(ROW_NAMES) else row)
            parts = [t if len(rows) == len(column) else f"{t}, {' & '.join(rows)}" for t, rows in texts.items()]
            name = f"{name} ({'; '.join(parts)})"
        handles.append(line)
        labels.append(name)
    legend_below(bottom, title, handles, labels, ncols=2 if len(labels) > 3 else 1)


def _profile_grid(df: pd.DataFrame, quantity: str, site: str, ylabel: str, title: str) -> Figure:
    from analysis.plot import figures  # lazy: matplotlib only to draw, so `lnscope --help` starts fast

    families = _families(df)
    fig, axes = figures.figure_grid(len(ARCH_PANELS) * len(families), ncols=len(families), panel_size=(4.6, 2.9))
    for row, (arch, stack, arch_title) in enumerate(ARCH_PANELS):
        for col, (family, members) in enumerate(families):
            ax = axes[row * len(families) + col]
            has_rows = (df["quantity"] == quantity) & (df["site"] == site) & (df["arch"] == arch)
            if not (has_rows & df["placement"].isin(members)).any():  # e.g. LN gains of norm-free placements
                ax.text(
                    0.5,
                    0.5,
                    f"no '{site}' site in\n{', '.join(members)}",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    fontsize=figures.FONT_MIN_PT,
                    color="0.4",
                )
                ax.set_axis_off()
            else:
                figures.plot_layer_profile(
                    df,
                    ax,
                    quantity=quantity,
                    site=site,
                    stack=stack,
                    where={"arch": arch, "placement": members},
                    ylabel=ylabel if col == 0 else "",
                    legend=False,  # one legend per column, under it (_legend_below)
                )
            ax.set_title(f"{arch_title}\n{FAMILY_TITLES[family]}", fontsize=figures.FONT_MIN_PT + 1)
    seeds = df["seed"].nunique()
    for col in range(len(families)):
        column = [axes[row * len(families) + col] for row in range(len(ARCH_PANELS))]
        if column[-1].axison:
            _legend_below(column, f"placement ({seeds} seeds)")
    fig.suptitle(title, fontsize=11)
    return fig


def _cka_grid(df: pd.DataFrame, arch: str, stack: str, arch_title: str) -> Figure:
    from matplotlib.ticker import MaxNLocator

    from analysis.plot import figures  # lazy: matplotlib only to draw, so `lnscope --help` starts fast

    names = [p for p in PLACEMENTS if p in set(df["placement"])]
    ncols = min(5, len(names))
    fig, axes = figures.figure_grid(len(names), ncols=ncols, panel_size=(2.1, 2.1))
    for i, (ax, placement) in enumerate(zip(axes, names)):
        figures.plot_cka_heatmap(df, ax, stack=stack, placement=placement, where={"arch": arch}, colorbar=False)
        ax.set_title(placement, fontsize=figures.FONT_MIN_PT + 1)
        for axis in (ax.xaxis, ax.yaxis):  # few ticks: a narrow panel's labels must not run together
            axis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        ax.set_xlabel("other layer" if i >= len(names) - ncols else "")
        ax.set_ylabel("layer" if i % ncols == 0 else "")
    cbar = fig.colorbar(axes[0].images[0], ax=list(axes), shrink=0.8)  # one for all: every panel spans [0, 1]
    cbar.set_label("CKA (seed mean)")
    cbar.ax.tick_params(labelsize=figures.FONT_MIN_PT)
    seeds = df["seed"].nunique()
    fig.suptitle(f"CKA between layers' outputs at init, {arch_title} (mean of {seeds} seeds)", fontsize=11)
    return fig


NOT_APPLICABLE = "n/a"  # a statistic with a 0/0 or a non-finite seed: measured, and said why (nan_note)
NOT_MEASURED = "—"  # the frame has no rows for the statistic
RATIO_COLUMNS = ("G_top/G_bottom", "g_bottom/g_top", "‖x_L‖/‖x_1‖")  # positive ratios: geometric mean


def seed_mean_text(values: np.ndarray, geometric: bool) -> str:
    """The project's statistics convention (as the figures' band="auto"): the seed mean with its 95%
    Student-t interval, `0.91 [0.885, 0.935]`; for positive ratios (`geometric`) the interval of the
    mean of ln(value), mapped back (the geometric mean). "n/a" when a seed's value is not finite (a
    0/0 ratio or a diverged run), "—" when nothing was measured, "(1 seed)" where one seed leaves no
    interval.

    Args:
        values: (seeds,) one value per seed.
        geometric: use the geometric mean (values must all be > 0, else the arithmetic mean is used).
    """
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        return NOT_MEASURED
    if not np.isfinite(v).all():
        return NOT_APPLICABLE
    geometric = geometric and bool((v > 0).all())
    w = np.log(v) if geometric else v
    back = np.exp if geometric else (lambda x: x)
    center = w.mean()
    if v.size < 2:
        return f"{back(center):.3g} (1 seed)"
    half = t_quantile(0.975, v.size - 1) * w.std(ddof=1) / np.sqrt(v.size)
    return f"{back(center):.3g} [{back(center - half):.3g}, {back(center + half):.3g}]"


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, placement): the calibration's headline statistics (docs/calibration.md), each as the
    seed mean with its 95% t interval (geometric for the ratios; `seed_mean_text`)."""
    rows = []
    present = [p for p in PLACEMENTS if p in set(df["placement"])]
    for (arch, stack, _), placement in [(a, p) for a in ARCH_PANELS for p in present]:
        sel = df[(df["arch"] == arch) & (df["stack"] == stack) & (df["placement"] == placement)]

        def per_seed(quantity, site, fn):
            s = sel[(sel["quantity"] == quantity) & (sel["site"] == site) & (sel["layer"] >= 0)]
            values = s.pivot_table(index="seed", columns="layer", values="value", dropna=False).to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 is a result (ReZero), kept as NaN
                return fn(values) if values.size else np.array([])  # not measured: "—", not "n/a"

        stats = {
            "G_top/G_bottom": per_seed("param_grad_norm", "mlp.w2.weight", lambda v: v[:, -1] / v[:, 0]),
            "g_bottom/g_top": per_seed("act_grad_norm", "resid_pre", lambda v: v[:, 0] / v[:, -1]),
            "cos(x_L-1, x_L)": per_seed("cos_adjacent", "resid_pre", lambda v: v[:, -1]),
            "‖x_L‖/‖x_1‖": per_seed("act_norm", "resid_pre", lambda v: v[:, -1] / v[:, 0]),
        }
        row = {"arch": arch, "placement": placement}
        for name, values in stats.items():
            row[name] = seed_mean_text(values, geometric=name in RATIO_COLUMNS)
        rows.append(row)
    return pd.DataFrame(rows)


SUMMARY_NOTES = """\
Each cell: the seed mean with its 95% Student-t interval over seeds, the geometric mean for the three
ratios (the figures' convention). Columns (layer 1 = bottom, L = top; the encdec rows are its decoder):
- G_top/G_bottom: ‖∂ℒ/∂W2‖ of the top layer's FFN output matrix over the bottom layer's (Xiong et al.'s
  gradient-norm comparison; ≫ 1 means the bottom layers' parameters get vanishing gradients).
- g_bottom/g_top: ‖∂ℒ/∂x‖ at the bottom layer's input over the top layer's (Takase et al.'s figure).
- cos(x_L-1, x_L): mean per-token cosine between the inputs of the last two layers (near 1: the top
  layers barely change the stream, Xie et al.'s representation collapse).
- ‖x_L‖/‖x_1‖: per-token RMS of the top layer's input over the bottom layer's (stream growth).
"""


def nan_note(table: pd.DataFrame) -> str:
    """Name the cells that are NaN, which are results (0/0 or diverged), not missing data."""
    cells = [
        f"{row['arch']}/{row['placement']} {col}"
        for _, row in table.iterrows()
        for col in table.columns[2:]
        if str(row[col]).startswith(NOT_APPLICABLE)
    ]
    if not cells:
        return ""
    return (
        "\nn/a cells are measured, not missing: the ratio is 0/0 (ReZero's α = 0 at init gives every sublayer "
        "weight an exactly zero gradient, so a gradient ratio is not applicable) or a seed's run is not "
        "finite. Here: " + "; ".join(cells) + ".\n"
    )


@dataclass(frozen=True)
class AtlasSettings:
    """What the initialization atlas probes; its `key()` names a stored study that can be reused.

    Attributes:
        layers: depth of the decoder-only model and of each stack of the encoder-decoder (18 in the
            papers' analyses; 6 for a smoke run).
        seeds: models per configuration (one compiled program, analysis.probe.probe_at_init).
        placements: registry keys, in registry order (all of them by default).
        batch_size, seq_len: the random-token batch.
    """

    layers: int = 18
    seeds: int = 3
    placements: tuple[str, ...] = tuple(PLACEMENTS)
    batch_size: int = 8
    seq_len: int = 32

    def __post_init__(self) -> None:
        for name in ("layers", "seeds", "batch_size", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        object.__setattr__(self, "placements", check_placements(self.placements))

    def meta(self) -> dict:
        """Everything the study's numbers depend on (settings, probes, the harness model of each
        placement, the source of the code that probes them), as stored beside them."""
        return {
            "layers": self.layers,
            "seeds": self.seeds,
            "placements": list(self.placements),
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "probes": list(CHEAP_PROBES),
            "models": {
                f"{arch}/{p}": dataclasses.asdict(harness_config(arch, p, self.layers))
                for arch, _, _ in ARCH_PANELS
                for p in self.placements
            },
            "code": code_fingerprint(),
        }

    def key(self) -> str:
        return content_id(self.meta())


def _plan(settings: AtlasSettings) -> dict[str, list[InitJob]]:
    return {
        "atlas": atlas_jobs(settings.layers, settings.seeds, settings.placements, settings.batch_size, settings.seq_len)
    }


def collect(settings: AtlasSettings, store: Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Probe every (arch, placement) of the atlas at initialization; one tidy frame (analysis.probe.tidy's
    columns; jobs computed on a pool of processes, and kept in `store` when given)."""
    experiment = atlas_experiment(settings)
    compute_jobs(experiment.jobs(), store, progress=progress, desc="probing placements")
    return experiment.run(store=store).drop(columns=["part", "variant", "job"])


def is_stored_study(settings: AtlasSettings, path: Path) -> bool:
    """Whether `path` holds a study with `settings`' key (reused by init_study)."""
    path = Path(path)
    if not (path.exists() and path.with_suffix(".json").exists()):
        return False
    return json.loads(path.with_suffix(".json").read_text()).get("key") == settings.key()


def init_study(
    settings: AtlasSettings, path: Path, *, reuse: bool = True, store: Path | None = None, progress: bool = True
) -> tuple[pd.DataFrame, dict]:
    """The atlas' tidy frame: read from `path` (parquet + json) when it holds a study with the same
    settings key (and `reuse`), else probed (its jobs kept in `store` when given) and written there
    (data before any figure)."""
    path = Path(path)
    if reuse and is_stored_study(settings, path):
        df, meta = read_run(path)
        return df, {**meta, "reused": True}
    start = time.perf_counter()
    df = collect(settings, store=store if reuse else None, progress=progress)
    meta = {**settings.meta(), "key": settings.key(), "seconds": round(time.perf_counter() - start, 1)}
    write_run(df, meta, path)
    return df, {**meta, "reused": False}


PROFILE_PANELS = (
    ("act_grad_norm", "resid_pre", "‖∂ℒ/∂x_l‖ at each layer's input"),
    ("param_grad_norm", "mlp.w2.weight", "‖∂ℒ/∂W₂‖ of each layer's FFN output weight"),
    ("update_ratio", "mlp", "‖F(x)‖/‖x‖: each layer's FFN output over its input stream"),
    ("act_norm", "resid_pre", "per-token RMS of each layer's input"),
    ("ln_jacobian_gain", "mlp_ln", "‖J_LNᵀ g‖/‖g‖ of the FFN sublayer's norm"),
    ("cos_adjacent", "resid_pre", "cosine between consecutive layers' inputs"),
)
# The y label of each profile (plain language; the code names are in the caption).
PROFILE_YLABELS = {
    "act_grad_norm": "‖∂ℒ/∂x‖ (layer input)",
    "param_grad_norm": "‖∂ℒ/∂W₂‖ (FFN output weight)",
    "update_ratio": "‖F(x)‖/‖x‖ (FFN out / stream)",
    "act_norm": "RMS of the layer input",
    "ln_jacobian_gain": "‖J_LNᵀ g‖/‖g‖ (FFN's norm)",
    "cos_adjacent": "cos(x_l, x_l+1)",
}
CONVENTION = "line: seed mean (geometric on a log axis); band: its 95% t interval"


def atlas_figures(df: pd.DataFrame, layers: int, seeds: int) -> list[tuple[str, str, Figure]]:
    """(name, caption, figure) of every atlas figure, drawn from the tidy frame (figures only read it)."""
    out = []
    for quantity, site, title in PROFILE_PANELS:
        fig = _profile_grid(
            df, quantity, site, PROFILE_YLABELS[quantity], f"{title} at init, {layers} layers\n{CONVENTION}"
        )
        caption = (
            f"{title} at initialization, per layer (0 = bottom); probe `{quantity}` at site `{site}`"
            + (" (the FFN output before ReZero's α)" if quantity == "update_ratio" else "")
            + ". Top row: "
            f"the decoder of an {layers}L-{layers}L encoder-decoder; bottom row: a {layers}-layer decoder-only "
            "model; one column per placement family present. Seed mean of "
            f"{seeds} seeds (the geometric mean on a log axis) with its 95% Student-t interval. A legend entry "
            "'a (≡ b)' marks a line that coincides with b's (within 1% of the axis' span at every layer, "
            "drawn under it); '≡ 0' a line that is exactly zero (ReZero at init), which a log axis cannot show."
        )
        out.append((quantity, caption, fig))
    for arch, stack, arch_title in ARCH_PANELS:
        caption = (
            f"Debiased linear CKA (probe `cka`) between every pair of layers' outputs (site `resid_post`), "
            f"{arch_title}, mean of {seeds} seeds: one panel per placement, one color scale [0, 1] for all."
        )
        out.append((f"cka_{arch}", caption, _cka_grid(df, arch, stack, arch_title)))
    return out


ATLAS_SUMMARY = (
    "Every placement of the zoo probed at initialization on the calibration harness (d_model 64, 4 heads, "
    "FFN 256, vocabulary 128, Xavier-uniform projections, no positional encoding, uniform random tokens, "
    "batch 8 of length 32): an {layers}L-{layers}L encoder-decoder (its decoder is shown) and an {layers}-layer "
    "decoder-only model, {seeds} seeds each. skip_scale is shown at λ = 2 (at λ = 1 it is Post-LN). Equations "
    "of each placement: docs/placements.md; what each probe computes: docs/probes.md."
)


def _figures(frame: pd.DataFrame) -> dict[str, Figure]:
    layers, seeds = int(frame["layers"].max()), int(frame["seed"].nunique())
    return {name: fig for name, _, fig in atlas_figures(frame, layers, seeds)}


# `lnscope report --quick` probes 6 layers; the calibration harness is the atlas' size at both other presets.
PRESETS = {"tiny": AtlasSettings(layers=6), "quick": AtlasSettings(), "paper": AtlasSettings()}


def atlas_experiment(settings: AtlasSettings | None = None) -> Experiment:
    """The atlas as an Experiment: its default PRESETS, or `settings` at every preset (what `lnscope
    report --layers/--seeds/--placements` asks for)."""
    return Experiment(
        name=NAME,
        paper="",
        title="Initialization atlas",
        summary="Every placement of the zoo probed at initialization on the calibration harness (d_model 64, "
        "4 heads, FFN 256, random tokens): an encoder-decoder and a decoder-only model of the same depth.",
        command="lnscope report --experiments none",
        presets=PRESETS if settings is None else dict.fromkeys(PRESETS, settings),
        plan=_plan,
        figures=_figures,
        claims=(),
    )


EXPERIMENT = atlas_experiment()
