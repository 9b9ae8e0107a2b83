"""Reports over your own data: training runs (a sweep's store) and `lnscope probe` outputs.

    lnscope report --runs lnscope-store/runs             # curves, profiles over steps, summary
    lnscope report --probes post.parquet pre.parquet     # per-layer profiles of probe outputs
    lnscope report --runs runs/ --probes a.parquet --out reports/mine

The same self-contained HTML page as `lnscope report` (analysis.report.html.render_html), written to
`<out>/index.html` with report.md, the figures (figures/<section>/*.png|svg) and the tables it drew
from (data/*.parquet) beside it. Nothing is computed: the runs and probe files are read.

For training runs (`runs_section`): one line per configuration (the config fields the runs differ
in, e.g. "optim.lr=0.001"), the mean over seeds with its 95% t interval shaded:
    - the validation and training loss against the update step, a diverged seed marked (×) where it
      diverged;
    - per probed quantity, the seed-mean per-layer profile at each probed step (one panel per
      configuration, the step as color);
    - a summary table: per configuration its seeds, the diverged ones (and when), the final
      validation and training loss (mean over the seeds that did not diverge).
For probe files (`probes_section`): per probed quantity, its per-layer profile, one line per file
(its run name), median over seeds with the min-max band (analysis.plot.figures.plot_layer_profile).
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analysis.experiments.claimsfile import probes_frame, runs_frame
from analysis.io import atomic_write, environment, write_run
from analysis.plot.figures import figure_grid, log_axis, plot_layer_profile, plot_lines, spans_decades
from analysis.probe.tidy import pairwise_quantities
from analysis.report.build import BuiltReport
from analysis.report.content import CHECK_COLUMNS, RenderedFigure, ReportContent, Section, render_figure
from analysis.report.html import render_html
from analysis.report.markdown import figure_path, render_markdown

# The site drawn for a quantity probed at several (the first present; else the first in sort order).
PREFERRED_SITES = ("resid_pre", "mlp.w2.weight", "mlp", "resid_post", "mlp_ln")
# Words for the quantities' code names on axes (the code name stays in the caption).
QUANTITY_WORDS = {
    "act_grad_norm": "‖∂ℒ/∂x‖, gradient at the layer's input",
    "param_grad_norm": "‖∂ℒ/∂W‖, parameter gradient",
    "act_norm": "RMS of the activation",
    "update_ratio": "‖F(x)‖/‖x‖, sublayer output over its input",
    "ln_jacobian_gain": "LN Jacobian gain",
    "cos_adjacent": "cosine of adjacent layers' activations",
    "val_loss": "validation loss (nats/token)",
    "loss": "training loss (nats/token)",
}
SITE_WORDS = {"mlp.w2.weight": "FFN output weight W2", "mlp.w1.weight": "FFN input weight W1", "mlp": "FFN sublayer"}
CONFIG = "configuration"  # the hue column: what tells the runs apart


def _words(quantity: str, site: str = "") -> str:
    """The axis label of a quantity (at a parameter site, which parameter): words, not code names."""
    words = QUANTITY_WORDS.get(quantity, quantity.replace("_", " "))
    return f"‖∂ℒ/∂W‖, {SITE_WORDS.get(site, site)}" if quantity == "param_grad_norm" and site else words


def _label_configs(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with a CONFIG column: the dotted config fields the runs differ in ("optim.lr=0.001,
    model.placement=pre"), or the placement when they differ in nothing else."""
    dotted = [c for c in frame.columns if "." in c and frame.groupby("run")[c].nunique().max() <= 1]
    per_run = frame.drop_duplicates("run").set_index("run")
    varying = [c for c in dotted if per_run[c].astype(str).nunique() > 1]
    if varying:
        labels = {
            r: ", ".join(f"{c}={row[c]:g}" if isinstance(row[c], float) else f"{c}={row[c]}" for c in varying)
            for r, row in per_run.iterrows()
        }
    else:
        labels = {r: f"{row['placement']} ({str(r)[:8]})" for r, row in per_run.iterrows()}
    return frame.assign(**{CONFIG: frame["run"].map(labels)})


def _mark_divergences(ax: Axes, frame: pd.DataFrame, quantity: str) -> int:
    """A × at each diverged seed's divergence step, at its configuration's last finite value; the count."""
    diverged = frame[(frame["status"] == "diverged") & (frame["quantity"] == quantity)]
    marked = 0
    for (config, _seed), rows in diverged.groupby([CONFIG, "seed"]):
        finite = rows[np.isfinite(rows["value"].to_numpy(float))].sort_values("step")
        step = int(rows["diverged_step"].iloc[0])
        y = float(finite["value"].iloc[-1]) if len(finite) else np.nan
        line = next((ln for ln in ax.get_lines() if ln.get_label() == config), None)
        color = line.get_color() if line is not None else "crimson"
        if np.isfinite(y):
            ax.plot([step], [y], "x", ms=9, mew=2, color=color, label="_diverged", zorder=5)
            marked += 1
    return marked


def curves_figure(frame: pd.DataFrame) -> tuple[Figure, int]:
    """Validation and training loss against the update step, one line per configuration; the number
    of diverged seeds marked."""
    quantities = [q for q in ("val_loss", "loss") if q in set(frame["quantity"])]
    if not quantities:
        raise ValueError(f"no loss curves among the quantities {sorted(set(frame['quantity']))}")
    fig, axes = figure_grid(len(quantities), ncols=1, panel_size=(5.0, 2.9))  # narrow: readable at page width
    marked = 0
    curves = frame[frame["site"] == "curve"]
    for ax, quantity in zip(axes, quantities):
        plot_lines(
            curves,
            ax,
            x="step",
            hue=CONFIG,
            band="ci",
            where={"quantity": quantity},
            xlabel="update step",
            ylabel=_words(quantity),
            title=f"{_words(quantity).split(' (')[0]} over training",
            legend_title=CONFIG,
        )
        marked += _mark_divergences(ax, curves, quantity)
        if ax is axes[0]:
            _legend_outside(ax)
        else:  # the same configurations as above: one legend
            ax.get_legend().remove()
            ax.sharex(axes[0])
    return fig, marked


def _legend_outside(ax: Axes) -> None:
    """The legend right of the axes, so it never covers a curve."""
    legend = ax.get_legend()
    if legend is None:
        return
    handles, labels = ax.get_legend_handles_labels()
    title = legend.get_title().get_text()
    ax.legend(
        handles,
        labels,
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        fontsize="small",
        title_fontsize="small",
        alignment="left",
    )


def _main_site(sel: pd.DataFrame) -> str:
    sites = sorted(set(sel["site"]))
    return next((s for s in PREFERRED_SITES if s in sites), sites[0])


def profile_quantities(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(quantity, site, stack) of every per-layer probe in `frame` (not pairwise ones like CKA), one
    site per quantity (PREFERRED_SITES), in the frame's order."""
    rows = frame[(frame["layer"] >= 0) & ~frame["quantity"].isin(pairwise_quantities())]
    out = []
    for quantity in pd.unique(rows["quantity"]):
        sel = rows[rows["quantity"] == quantity]
        site = _main_site(sel)
        for stack in pd.unique(sel.loc[sel["site"] == site, "stack"]):
            out.append((str(quantity), site, str(stack)))
    return out


def profiles_over_steps_figure(frame: pd.DataFrame, quantity: str, site: str, stack: str) -> Figure:
    """One panel per configuration: the seed-mean per-layer profile of `quantity` at `site` at every
    probed step, colored by the step."""
    sel = frame[(frame["quantity"] == quantity) & (frame["site"] == site) & (frame["stack"] == stack)]
    sel = sel[sel["layer"] >= 0]
    configs = list(pd.unique(sel[CONFIG]))
    fig, axes = figure_grid(len(configs), ncols=2, panel_size=(3.6, 3.0))
    for ax in axes[1:]:
        ax.sharey(axes[0])  # one scale: the configurations compare at a glance
    steps = sorted(pd.unique(sel["step"]))
    cmap = plt.get_cmap("viridis")
    norm = plt.Normalize(min(steps), max(max(steps), min(steps) + 1))
    logy = spans_decades(sel["value"])
    for ax, config in zip(axes, configs):
        mine = sel[sel[CONFIG] == config]
        means = mine.groupby(["step", "layer"])["value"].mean().unstack("layer")
        for step, row in means.iterrows():
            ax.plot(row.index, row.to_numpy(float), "-o", ms=3, lw=1.3, color=cmap(norm(step)))
        if logy:
            log_axis(ax.yaxis)
        ax.set_title(config, fontsize="medium")
        ax.set_xlabel("layer (0 = bottom)")
        if ax is axes[0] or len(axes) > 2 and list(axes).index(ax) % 2 == 0:  # one label per row
            ax.set_ylabel(_words(quantity, site))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, which="both", alpha=0.3, lw=0.5)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.9)
    bar.set_label("update step (0 = initialization)")
    return fig


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: run id, seeds, diverged seeds (at which step), final validation and
    training loss (mean over the seeds that did not diverge)."""
    rows = []
    curves = frame[frame["site"] == "curve"]
    for (config, run), mine in curves.groupby([CONFIG, "run"], sort=False):
        per_seed = mine.drop_duplicates("seed").set_index("seed")
        diverged = per_seed[per_seed["status"] == "diverged"]
        alive = [s for s in per_seed.index if s not in diverged.index]
        finals = {}
        for quantity in ("val_loss", "loss"):
            q = mine[(mine["quantity"] == quantity) & mine["seed"].isin(alive)].sort_values("step", kind="stable")
            last = q.groupby("seed").tail(1)["value"].to_numpy(float)
            finals[quantity] = float(np.mean(last)) if last.size else np.nan
        rows.append(
            {
                CONFIG: config,
                "run": str(run)[:8],
                "steps": int(per_seed["steps"].iloc[0]),
                "seeds": len(per_seed),
                "diverged": ", ".join(f"seed {s} at step {int(r['diverged_step'])}" for s, r in diverged.iterrows())
                or "none",
                "final validation loss": finals["val_loss"],
                "final training loss": finals["loss"],
            }
        )
    return pd.DataFrame(rows)


def runs_section(folder: Path | str, key: str = "runs") -> tuple[Section, pd.DataFrame]:
    """The section of the training runs under `folder`, and the tidy frame it drew from."""
    frame = _label_configs(runs_frame(folder))
    figures: list[RenderedFigure] = []
    fig, marked = curves_figure(frame)
    figures.append(
        render_figure(
            fig,
            "loss_curves",
            f"Validation and training loss (`val_loss`, `loss`) against the update step, one line per {CONFIG}: "
            "the mean over seeds, the 95% t interval of the mean shaded. "
            + (f"× marks where a seed diverged ({marked} marked)." if marked else "No seed diverged."),
        )
    )
    for quantity, site, stack in profile_quantities(frame):
        figures.append(
            render_figure(
                profiles_over_steps_figure(frame, quantity, site, stack),
                f"profile_{quantity}_{stack}".replace(".", "_"),
                f"{_words(quantity, site)} (`{quantity}` at `{site}`, {stack} stack) per layer at each probed step: "
                "the mean over seeds, darker is earlier.",
            )
        )
    summary = summary_table(frame)
    runs = summary[CONFIG].nunique()
    text = (
        f"The training runs in `{folder}`: {runs} configuration(s), read from the store (nothing recomputed). "
        f"Configurations are named by the config fields they differ in."
    )
    section = Section(
        key=key,
        title="Your training runs",
        citation="",
        summary=text,
        figures=tuple(figures),
        tables=(("Summary: final losses (mean over the seeds that did not diverge)", summary),),
    )
    return section, frame


def probes_section(paths: Sequence[Path | str], key: str = "probes") -> tuple[Section, pd.DataFrame]:
    """The section of `lnscope probe` outputs: per quantity its per-layer profile, one line per file."""
    frame = probes_frame(paths)
    figures = []
    for quantity, site, stack in profile_quantities(frame):
        fig, axes = figure_grid(1, ncols=1, panel_size=(6.4, 4.0))
        plot_layer_profile(frame, axes[0], quantity=quantity, site=site, stack=stack, hue="run")
        axes[0].set_ylabel(_words(quantity, site))
        _legend_outside(axes[0])
        figures.append(
            render_figure(
                fig,
                f"{quantity}_{stack}".replace(".", "_"),
                f"{_words(quantity, site)} (`{quantity}` at `{site}`, {stack} stack) per layer at initialization, one "
                "line per probe file (its run name): median over seeds, min-max band.",
            )
        )
    per_file = frame.groupby("run", sort=False).agg(
        arch=("arch", "first"),
        placement=("placement", "first"),
        norm=("norm", "first"),
        layers=("layers", "first"),
        d_model=("d_model", "first"),
        seeds=("seed", "nunique"),
        quantities=("quantity", lambda q: ", ".join(sorted(set(q)))),
    )
    section = Section(
        key=key,
        title="Your probe outputs",
        citation="",
        summary=f"{len(per_file)} probe file(s): " + ", ".join(f"`{p}`" for p in paths) + ".",
        figures=tuple(figures),
        tables=(("The probe files", per_file.reset_index()),),
    )
    return section, frame


def build_runs_report(
    out: Path | str,
    *,
    runs: Path | str | None = None,
    probes: Iterable[Path | str] = (),
    title: str = "lnscope report: your runs",
) -> BuiltReport:
    """Write the report of training runs (`runs`: a store or sweep folder) and/or probe outputs
    (`probes`: .parquet files) into `out`: index.html, report.md, figures/ and data/."""
    start = time.perf_counter()
    probes = [Path(p) for p in probes]
    if runs is None and not probes:
        raise ValueError("nothing to report: give runs (a folder of training runs) or probes (.parquet files)")
    missing = [str(p) for p in probes if p.suffix != ".parquet" or not p.is_file()]
    if missing:
        raise ValueError(f"--probes: not an existing .parquet file (an `lnscope probe --out`): {missing}")
    out = Path(out)
    sections: list[Section] = []
    if runs is not None:
        section, frame = runs_section(runs)
        write_run(frame, {"runs": str(runs)}, out / "data" / "runs.parquet")
        sections.append(section)
    if probes:
        section, frame = probes_section(probes)
        write_run(frame, {"probes": [str(p) for p in probes]}, out / "data" / "probes.parquet")
        sections.append(section)
    env = environment()
    env.update(
        {
            "runs": str(runs) if runs is not None else "none",
            "probes": ", ".join(map(str, probes)) or "none",
            "generated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
            "wall_time_s": round(time.perf_counter() - start, 1),
        }
    )
    content = ReportContent(
        title=title,
        preset="your data",
        checks=pd.DataFrame(columns=list(CHECK_COLUMNS)),
        sections=tuple(sections[:-1]),
        atlas=sections[-1],
        environment=env,
    )
    for section in sections:
        for fig in section.figures:
            for suffix, data in (("png", fig.png), ("svg", fig.svg)):
                atomic_write(out / figure_path(section, fig.name, suffix), lambda tmp, d=data: tmp.write_bytes(d))
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(render_markdown(content)))
    atomic_write(out / "index.html", lambda tmp: tmp.write_text(render_html(content)))
    seconds = round(time.perf_counter() - start, 1)
    print(f"report written to {out / 'index.html'} ({seconds:.0f} s)")
    return BuiltReport(index=out / "index.html", failed=(), seconds=seconds)
