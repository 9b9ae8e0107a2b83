"""`lnscope report` / `make report`: run everything and write one self-contained HTML report.

    lnscope report                                  # quick preset -> reports/quick/index.html
    lnscope report --preset paper                   # the papers' sizes (a GPU) -> reports/paper/
    lnscope report --quick --out /tmp/smoke         # a smoke run: 6-layer atlas, tiny preset
    lnscope report --redraw                         # figures and pages again from the stored data

Steps: the initialization atlas of every placement (`analysis.experiments.atlas.init_study`), the
chosen preset of every other experiment (`analysis.experiments.EXPERIMENTS`; each experiment reuses
stored results whose config hash matches, in the store every lnscope command shares unless `store` is
given: `analysis.options.default_store()`), the hypothesis
check of every claim on its experiment's frame, then the figures and the pages. Written into `<out>`:

    index.html                  the report, one self-contained file (figures embedded)
    report.md                   the same for a repository browser (figures linked)
    data/init.parquet|json      the atlas' tidy table and its settings (with the settings' hash)
    data/<experiment>.parquet   each experiment's tidy table
    data/checks.parquet|json    one row per hypothesis check
    figures/<section>/*.png|svg every figure, PNG and SVG

Data is written before any figure is drawn, so a figure bug never loses a measurement. An
experiment that raises is reported in its section (and makes the command exit non-zero) instead of
stopping the other parts.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis.experiments import EXPERIMENTS
from analysis.experiments.atlas import (
    ATLAS_SUMMARY,
    SUMMARY_NOTES,
    AtlasSettings,
    atlas_experiment,
    atlas_figures,
    init_study,
    is_stored_study,
    nan_note,
    summary_table,
)
from analysis.experiments.atlas import NAME as ATLAS
from analysis.experiments.claims import check
from analysis.experiments.robustness import read_summary
from analysis.experiments.runs import compute_jobs
from analysis.identity import content_id, file_digest, source_fingerprint
from analysis.io import atomic_write, environment, read_run, write_run
from analysis.options import default_store
from analysis.report.content import (
    CHECK_COLUMNS,
    RenderedFigure,
    ReportContent,
    Section,
    render_figure,
    settings_rows,
)
from analysis.report.html import render_html
from analysis.report.markdown import figure_path, render_markdown
from analysis.runtime import check_environment, release_compiled

PRESETS = ("tiny", "quick", "paper")  # tiny: the test suite's end-to-end size
Checker = Callable[[Any, pd.DataFrame], pd.DataFrame]


@dataclasses.dataclass(frozen=True)
class BuiltReport:
    """Where the report is, which parts failed to run (reported in their sections), and how long it took."""

    index: Path
    failed: tuple[str, ...]
    seconds: float


def default_experiments() -> dict[str, Any]:
    """Every registered experiment (analysis.experiments.EXPERIMENTS) but the atlas, which has its own
    section, in registry order."""
    return {name: experiment for name, experiment in EXPERIMENTS.items() if name != ATLAS}


def check_claims(experiment: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per claim of `experiment`, checked on its frame (analysis.experiments.claims.check)."""
    rows = [dataclasses.asdict(check(claim, frame)) for claim in experiment.claims]
    return pd.DataFrame(rows, columns=None if rows else list(CHECK_COLUMNS))


def select_experiments(names: str | None, available: Mapping[str, Any]) -> dict[str, Any]:
    """`names` = comma-separated keys, "all"/None for every one, "none" for none."""
    if names is None or names.strip() in ("", "all"):
        return dict(available)
    if names.strip() == "none":
        return {}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in available]
    if unknown or not wanted:
        raise ValueError(f"experiments {wanted}: unknown {unknown}; valid choices are {list(available)} (or all, none)")
    return {n: available[n] for n in available if n in wanted}


def _threshold_bounds(threshold: Any, direction: str) -> tuple[float, float]:
    if direction == "in":
        low, high = threshold
        return float(low), float(high)
    return (float(threshold), math.nan) if direction == ">=" else (math.nan, float(threshold))


def write_checks(checks: pd.DataFrame, data: Path) -> None:
    """checks.json (a list of objects) and checks.parquet (threshold as numeric low/high columns)."""
    records = []
    for row in checks.to_dict("records"):
        threshold = row["threshold"]
        row["threshold"] = list(threshold) if isinstance(threshold, (tuple, list, np.ndarray)) else threshold
        records.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    atomic_write(data / "checks.json", lambda tmp: tmp.write_text(json.dumps(records, indent=2, default=str) + "\n"))
    table = checks.copy()
    bounds = [_threshold_bounds(t, d) for t, d in zip(table["threshold"], table["direction"])]
    table["threshold_low"] = [b[0] for b in bounds]
    table["threshold_high"] = [b[1] for b in bounds]
    table = table.drop(columns=["threshold"])
    atomic_write(data / "checks.parquet", lambda tmp: table.to_parquet(tmp, index=False))


def _settings(experiment: Any, preset: str) -> tuple[tuple[str, str], ...]:
    """The preset's settings as (name, value) rows (a small table in the report), then the command."""
    presets = getattr(experiment, "presets", {}) or {}
    rows = (("preset", preset), *settings_rows(presets[preset])) if preset in presets else ()
    if getattr(experiment, "command", ""):
        rows += (("command", f"`{experiment.command}`"),)
    return rows


def figure_caption(fig: Any, name: str) -> str:
    """A figure's caption from its titles: the suptitle, else its panels' titles, else its name."""
    if fig.get_suptitle():
        return fig.get_suptitle()
    titles = list(dict.fromkeys(" ".join(ax.get_title().split()) for ax in fig.axes if ax.get_title()))
    return "; ".join(titles) or name.replace("_", " ")


def source_digest() -> str:
    """Hash of lnscope's own source (models/ and analysis/): any code change redraws every figure."""
    return source_fingerprint(("models", "analysis"))


def figure_key(data: Path, source: str) -> str:
    """What a section's figures depend on: its data file and the code that draws them."""
    return content_id({"data": file_digest(data), "code": source})


def _cached_figures(out: Path, key: str, section: str) -> tuple[RenderedFigure, ...] | None:
    """A section's figures from an earlier report whose data and code were the same, else None."""
    manifest = out / "figures" / section / "figures.json"
    try:
        meta = json.loads(manifest.read_text())
        if meta["key"] != key:
            return None
        folder = manifest.parent
        return tuple(
            RenderedFigure(
                name=f["name"],
                caption=f["caption"],
                png=(folder / f"{f['name']}.png").read_bytes(),
                svg=(folder / f"{f['name']}.svg").read_bytes(),
            )
            for f in meta["figures"]
        )
    except (OSError, KeyError, ValueError):
        return None


def _manifest(key: str, figures: tuple[RenderedFigure, ...]) -> str:
    return json.dumps({"key": key, "figures": [{"name": f.name, "caption": f.caption} for f in figures]}, indent=1)


def _draw(experiment: Any, frame: pd.DataFrame) -> tuple[tuple[RenderedFigure, ...], str]:
    """The experiment's figures, rendered; a drawing error is returned as text (the data is already
    written, so a figure bug costs the figures of one section, not the report)."""
    figures: list[RenderedFigure] = []
    try:
        for name, fig in experiment.figures(frame).items():
            figures.append(render_figure(fig, name, figure_caption(fig, name)))
    except Exception as err:
        traceback.print_exc()
        return tuple(figures), f"drawing its figures failed: {type(err).__name__}: {err}"
    finally:
        plt.close("all")
    return tuple(figures), ""


def _experiment_section(
    name: str, experiment: Any, preset: str, figures: tuple[RenderedFigure, ...], checks: pd.DataFrame, error: str
) -> Section:
    return Section(
        key=name,
        title=f"{name}: {experiment.title}",
        citation=experiment.paper,
        summary=experiment.summary,
        claims=checks,
        figures=figures,
        settings=_settings(experiment, preset),
        error=error,
    )


def _atlas_figures(df: pd.DataFrame, meta: dict) -> tuple[RenderedFigure, ...]:
    return tuple(
        render_figure(fig, name, caption) for name, caption, fig in atlas_figures(df, meta["layers"], meta["seeds"])
    )


def _atlas_section(df: pd.DataFrame, meta: dict, figures: tuple[RenderedFigure, ...]) -> Section:
    layers, seeds = meta["layers"], meta["seeds"]
    table = summary_table(df)
    summary = ATLAS_SUMMARY.format(layers=layers, seeds=seeds)
    notes = SUMMARY_NOTES + nan_note(table)
    return Section(
        key="init",
        title="Initialization atlas",
        citation="",
        summary=summary + "\n\n" + notes,
        figures=figures,
        tables=(("Headline statistics per placement: seed mean [95% t interval] (geometric for ratios)", table),),
        settings=(("layers", str(layers)), ("seeds", str(seeds)), ("placements", ", ".join(meta["placements"]))),
    )


def _write_figures(out: Path, sections: list[Section], keys: Mapping[str, str]) -> None:
    """figures/<section>/<name>.png|svg for every figure, and a manifest with the key they were drawn
    for (reused by the next report when data and code are unchanged); files of figures no longer
    drawn are removed."""
    root = out / "figures"
    wanted = set()
    for section in sections:
        if section.key in keys:
            path = root / section.key / "figures.json"
            wanted.add(path)
            atomic_write(path, lambda tmp, s=section: tmp.write_text(_manifest(keys[s.key], s.figures)))
        for fig in section.figures:
            for suffix, data in (("png", fig.png), ("svg", fig.svg)):
                path = out / figure_path(section, fig.name, suffix)
                wanted.add(path)
                atomic_write(path, lambda tmp, data=data: tmp.write_bytes(data))
    if root.exists():
        for path in root.rglob("*"):
            if path.is_file() and path not in wanted:
                path.unlink()
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()


def _compute_ahead(
    atlas: AtlasSettings,
    experiments: Mapping[str, Any],
    preset: str,
    store: Path,
    data: Path,
    *,
    reuse: bool,
    progress: bool,
) -> None:
    """Compute every stored-or-missing job of the atlas and the experiments at once (`compute_jobs`: a
    pool of processes, longest first). Best effort: an experiment whose plan cannot even be listed, or
    a job that fails, is left to its section, which then reports the error."""
    stored = reuse and is_stored_study(atlas, data / "init.parquet")
    jobs = [] if stored or not reuse else atlas_experiment(atlas).jobs(preset)
    for experiment in experiments.values():
        try:
            jobs += experiment.jobs(preset)
        except Exception:  # noqa: BLE001 - reported by the experiment's own section
            continue
    try:
        compute_jobs(jobs, store, progress=progress)
    except Exception:  # noqa: BLE001 - the parts compute what is missing, and report their own errors
        traceback.print_exc()


def build_report(
    out: Path,
    *,
    preset: str = "quick",
    atlas: AtlasSettings | None = None,
    experiments: Mapping[str, Any] | None = None,
    store: Path | None = None,
    redraw: bool = False,
    reuse: bool = True,
    checker: Checker = check_claims,
    title: str = "lnscope report: layer-normalization placements",
    progress: bool = True,
    robustness: Path | None = None,
) -> BuiltReport:
    """Run (or, with `redraw`, reload) every part and write the report into `out`.

    Args:
        out: report folder (created).
        preset: every experiment's preset ("quick": minutes on a 2-core CPU; "paper": the papers' sizes).
        atlas: the initialization atlas' settings (18 layers, 3 seeds, every placement by default).
        experiments: {name: Experiment}; None = every registered experiment.
        store: where experiments keep reusable results; None = the store every lnscope command shares
            (`analysis.options.default_store()`: $LNSCOPE_STORE, else ./lnscope-store), so the report
            reuses what `lnscope check` computed.
        redraw: no computation: figures, checks and pages from `<out>/data` alone.
        reuse: take stored results whose settings hash matches (False recomputes the atlas).
        checker: (experiment, frame) -> check rows; the default checks every claim of the experiment.
        title: the report's heading.
        progress: show a progress bar.
        robustness: a `lnscope check --robustness --out FILE` result; its "holds k/n; flipped by ..."
            becomes the claims table's robustness column (the sweep itself is too costly to run here).
    """
    start = time.perf_counter()
    atlas = atlas or AtlasSettings()
    experiments = default_experiments() if experiments is None else dict(experiments)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid choices: {', '.join(PRESETS)}")
    check_environment()  # a bad LNSCOPE_* value is an error here, not a traceback in the computing step
    lacking = [n for n, e in experiments.items() if preset not in (getattr(e, "presets", None) or {})]
    if lacking:
        raise ValueError(f"experiments {lacking} have no {preset!r} preset")
    robust = read_summary(robustness) if robustness is not None else None  # a bad file fails before compute
    out = Path(out)
    data = out / "data"
    store = Path(store) if store is not None else default_store()
    if redraw and not (data / "init.parquet").exists():
        raise ValueError(f"--redraw needs an existing {data / 'init.parquet'}; run the report without --redraw first")

    bar = tqdm(total=2 + len(experiments), desc="report", unit="part", disable=not progress, file=sys.stderr)
    timings: dict[str, float] = {}
    source = source_digest()
    keys: dict[str, str] = {}  # section -> what its figures were drawn from (data + code)

    # 0. Every job of every part, computed ahead on a pool of processes (the parts then read them back).
    t = time.perf_counter()
    if not redraw:
        bar.set_postfix_str("computing")
        _compute_ahead(atlas, experiments, preset, store, data, reuse=reuse, progress=progress)
        timings["computing"] = round(time.perf_counter() - t, 1)

    # 1. The atlas (data first).
    t = time.perf_counter()
    bar.set_postfix_str("initialization atlas")
    if redraw:
        init_df, init_meta = read_run(data / "init.parquet")
    else:
        init_df, init_meta = init_study(atlas, data / "init.parquet", reuse=reuse, store=store, progress=progress)
    timings["atlas"] = round(time.perf_counter() - t, 1)
    release_compiled()
    bar.update()

    # 2. Experiments: frame (stored), checks, figures.
    sections, all_checks, failed = [], [], []
    for name, experiment in experiments.items():
        t = time.perf_counter()
        bar.set_postfix_str(name)
        frame, error, checks, figures = None, "", pd.DataFrame(columns=list(CHECK_COLUMNS)), ()
        try:
            path = data / f"{name}.parquet"
            if redraw:
                if not path.exists():
                    raise ValueError(f"no stored data {path}: run the report without --redraw first")
                frame = read_run(path)[0]
            else:
                frame = experiment.run(preset, store)
                write_run(frame, {"experiment": name, "preset": preset, "store": str(store)}, path)
            checks = checker(experiment, frame)
        except Exception as err:  # a failing experiment is reported, and the others still run
            error = f"{type(err).__name__}: {err}"
            traceback.print_exc()
        if frame is not None and not error:
            keys[name] = figure_key(data / f"{name}.parquet", source)
            cached = None if redraw else _cached_figures(out, keys[name], name)
            figures, error = (cached, "") if cached is not None else _draw(experiment, frame)
            if error:
                keys.pop(name)
        if error:
            failed.append(name)
        section = _experiment_section(name, experiment, preset, figures, checks, error)
        sections.append(section)
        all_checks.append(checks)
        timings[name] = round(time.perf_counter() - t, 1)
        release_compiled()
        bar.update()

    # 3. Check table, atlas figures, pages.
    bar.set_postfix_str("figures and pages")
    t = time.perf_counter()
    checks = (
        pd.concat([c for c in all_checks if len(c)], ignore_index=True)
        if any(len(c) for c in all_checks)
        else pd.DataFrame(columns=list(CHECK_COLUMNS))
    )
    if robust is not None:  # a plain string per row: it survives the parquet write (a claim not swept: "")
        checks["robustness"] = [robust.get(i, {}).get("text", "") for i in checks["id"]]
    write_checks(checks, data)
    keys["init"] = figure_key(data / "init.parquet", source)
    atlas_figures = None if redraw else _cached_figures(out, keys["init"], "init")
    atlas_section = _atlas_section(
        init_df, init_meta, atlas_figures if atlas_figures is not None else _atlas_figures(init_df, init_meta)
    )
    env = environment()
    env.update(
        {
            "preset": preset,
            "atlas": f"{init_meta['layers']} layers, {init_meta['seeds']} seeds"
            + (" (stored result reused)" if init_meta.get("reused") else ""),
            "experiments": ", ".join(experiments) or "none",
            "failed": ", ".join(failed) or "none",
            "timings_s": ", ".join(f"{k} {v}" for k, v in timings.items()),
            "generated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
    )
    env["wall_time_s"] = round(time.perf_counter() - start, 1)
    content = ReportContent(
        title=title, preset=preset, checks=checks, sections=tuple(sections), atlas=atlas_section, environment=env
    )
    _write_figures(out, [*sections, atlas_section], keys)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(render_markdown(content)))
    atomic_write(out / "index.html", lambda tmp: tmp.write_text(render_html(content)))
    bar.update()
    bar.close()
    seconds = round(time.perf_counter() - start, 1)
    index = out / "index.html"
    print(f"report written to {index} ({seconds:.0f} s; figures and pages {time.perf_counter() - t:.0f} s)")
    if failed:
        print(f"failed parts (see their sections): {', '.join(failed)}", file=sys.stderr)
    return BuiltReport(index=index, failed=tuple(failed), seconds=seconds)
