"""The initialization-time report of every placement (the main job: `make report`).

    python -m analysis.report --out reports/init            # 18 layers, 3 seeds, every placement
    python -m analysis.report --out /tmp/smoke --quick      # 6 layers, a smoke run

Probes every placement at initialization on an 18-layer encoder-decoder and an 18-layer decoder-only
stack (the spec §2 harness: d_model 64, 4 heads, FFN 256, random tokens, batch 8, length 32) and
writes the tidy table (init.parquet + init.json), the figures, a summary table and an index.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis import figures
from analysis.api import probe_at_init
from analysis.io import atomic_write, read_run, write_run
from analysis.probes import CHEAP_PROBES
from models import PLACEMENTS, ModelConfig

ARCH_PANELS = (("encdec", "decoder", "decoder of an encoder-decoder"), ("decoder", "decoder", "decoder-only"))
FAMILY_TITLES = {"post": "norm on the stream (Post-LN family)", "pre": "un-normalized stream (Pre-LN family)",
                 "none": "no norm"}  # fmt: skip


# skip_scale at its default λ = 1 *is* Post-LN (it would hide the post line); the report shows λ = 2.
REPORT_OVERRIDES = {"skip_scale": {"skip_lambda": 2.0}}


def harness_config(arch: str, placement: str, layers: int) -> ModelConfig:
    """The spec §2 harness (Xavier-uniform, unit-variance token inputs, no biases, no dropout)."""
    return ModelConfig(arch=arch, placement=placement, layers=layers, d_model=64, heads=4, d_ff=256, vocab=128,
                       max_len=64, pos="none", **REPORT_OVERRIDES.get(placement, {}))  # fmt: skip


def collect(layers: int, seeds: int, batch_size: int = 8, seq_len: int = 32) -> pd.DataFrame:
    jobs = [(arch, p) for arch, _, _ in ARCH_PANELS for p in PLACEMENTS]
    frames = []
    for arch, placement in tqdm(jobs, desc="probing placements", unit="model"):
        cfg = harness_config(arch, placement, layers)
        frames.append(
            probe_at_init(cfg, seeds=range(seeds), batch_size=batch_size, seq_len=seq_len, probes=CHEAP_PROBES,
                          run=f"init/{arch}/{placement}")  # fmt: skip
        )
    return pd.concat(frames, ignore_index=True)


def _profile_grid(df: pd.DataFrame, quantity: str, site: str, title: str, path: Path) -> None:
    families = [f for f in FAMILY_TITLES if any(p.family == f for p in PLACEMENTS.values())]
    fig, axes = figures.figure_grid(len(ARCH_PANELS) * len(families), ncols=len(families), panel_size=(5.2, 3.6))
    for row, (arch, stack, arch_title) in enumerate(ARCH_PANELS):
        for col, family in enumerate(families):
            ax = axes[row * len(families) + col]
            members = [name for name, p in PLACEMENTS.items() if p.family == family]
            has_rows = (df["quantity"] == quantity) & (df["site"] == site) & (df["arch"] == arch)
            if not (has_rows & df["placement"].isin(members)).any():  # e.g. LN gains of norm-free placements
                ax.text(0.5, 0.5, f"no '{site}' site in\n{', '.join(members)}", ha="center", va="center",
                        transform=ax.transAxes, fontsize=9, color="0.4")  # fmt: skip
                ax.set_axis_off()
            else:
                figures.plot_layer_profile(df, ax, quantity=quantity, site=site, stack=stack,
                                           where={"arch": arch, "placement": members})  # fmt: skip
            ax.set_title(f"{arch_title}\n{FAMILY_TITLES[family]}", fontsize=9)
    fig.suptitle(title, fontsize=11)
    figures.save_figure(fig, path)


def _cka_grid(df: pd.DataFrame, arch: str, stack: str, arch_title: str, path: Path) -> None:
    names = list(PLACEMENTS)
    fig, axes = figures.figure_grid(len(names), ncols=5, panel_size=(3.2, 2.8))
    for ax, placement in zip(axes, names):
        figures.plot_cka_heatmap(df, ax, stack=stack, placement=placement, where={"arch": arch})
        ax.set_title(placement, fontsize=9)
    fig.suptitle(f"debiased linear CKA between layers' resid_post at init, {arch_title} (mean over seeds)", fontsize=11)
    figures.save_figure(fig, path)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-markdown table (no extra dependency)."""
    cells = [list(map(str, frame.columns))] + [[str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("---" for _ in frame.columns) + "|")
    return "\n".join(lines)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, placement): the spec's headline statistics, median over seeds (seed min–max in brackets)."""
    rows = []
    for (arch, stack, _), placement in [(a, p) for a in ARCH_PANELS for p in PLACEMENTS]:
        sel = df[(df["arch"] == arch) & (df["stack"] == stack) & (df["placement"] == placement)]

        def per_seed(quantity, site, fn):
            s = sel[(sel["quantity"] == quantity) & (sel["site"] == site) & (sel["layer"] >= 0)]
            values = s.pivot_table(index="seed", columns="layer", values="value").to_numpy()
            return fn(values) if values.size else np.full(1, np.nan)

        stats = {
            "G_top/G_bottom": per_seed("param_grad_norm", "mlp.w2.weight", lambda v: v[:, -1] / v[:, 0]),
            "g_bottom/g_top": per_seed("act_grad_norm", "resid_pre", lambda v: v[:, 0] / v[:, -1]),
            "cos(x_L-1, x_L)": per_seed("cos_adjacent", "resid_pre", lambda v: v[:, -1]),
            "‖x_L‖/‖x_1‖": per_seed("act_norm", "resid_pre", lambda v: v[:, -1] / v[:, 0]),
        }
        row = {"arch": arch, "placement": placement}
        for name, values in stats.items():
            row[name] = f"{np.median(values):.3g} [{np.min(values):.3g}, {np.max(values):.3g}]"
        rows.append(row)
    return pd.DataFrame(rows)


def run_report(out: Path, *, quick: bool = False, seeds: int = 3, redraw: bool = False) -> Path:
    """Probe, then write init.parquet/json, figures, summary.md and README.md into `out`.

    `redraw=True` skips the probing and redraws everything from an existing `out/init.parquet`.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    out = Path(out)
    start = time.perf_counter()
    if redraw:
        if not (out / "init.parquet").exists():
            raise ValueError(f"--redraw needs an existing {out / 'init.parquet'}; run the report without --redraw first")
        df, meta = read_run(out / "init.parquet")
    else:
        layers = 6 if quick else 18
        df = collect(layers, seeds)
        meta = {"layers": layers, "seeds": seeds, "batch_size": 8, "seq_len": 32, "probes": list(CHEAP_PROBES),
                "model": dataclasses.asdict(harness_config("encdec", "post", layers)),
                "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        write_run(df, meta, out / "init.parquet")  # data first: a figure bug never loses the measurements
    draw_report(df, meta, out)
    print(f"report written to {out} ({time.perf_counter() - start:.0f} s)")
    return out


def draw_report(df: pd.DataFrame, meta: dict, out: Path) -> None:
    """Figures, summary.md and README.md from the tidy report frame."""
    layers, seeds = meta["layers"], meta["seeds"]

    panels = [
        ("act_grad_norm", "resid_pre", "‖∂ℒ/∂x_l‖ at each layer's input (resid_pre)"),
        ("param_grad_norm", "mlp.w2.weight", "‖∂ℒ/∂W2_l‖, FFN output matrix of each layer"),
        ("update_ratio", "mlp", "‖FF(x)‖/‖x‖ of each layer's FFN contribution to the stream"),
        ("act_norm", "resid_pre", "per-token RMS of each layer's input (resid_pre)"),
        ("ln_jacobian_gain", "mlp_ln", "‖J_LNᵀ g‖/‖g‖ of the FFN sublayer's norm"),
        ("cos_adjacent", "resid_pre", "cosine between consecutive layers' inputs"),
    ]
    written = []
    for quantity, site, title in tqdm(panels, desc="figures", unit="figure"):
        path = out / f"{quantity}.png"
        _profile_grid(df, quantity, site, f"{title} at init, {layers} layers, {seeds} seeds (line: median; band: min-max)", path)
        written.append((path.name, title))
    for arch, stack, arch_title in ARCH_PANELS:
        path = out / f"cka_{arch}.png"
        _cka_grid(df, arch, stack, arch_title, path)
        written.append((path.name, f"CKA heatmaps, {arch_title}"))

    table = summary_table(df)
    atomic_write(out / "summary.md", lambda tmp: tmp.write_text(
        f"# Initialization-time summary ({layers} layers, {seeds} seeds; median [min, max] over seeds)\n\n"
        + markdown_table(table) + "\n"))  # fmt: skip
    index = [f"# lnscope initialization report\n", f"Generated by `make report` in {meta['seconds']} s "
             f"({layers}-layer stacks, {seeds} seeds, spec §2 harness). Data: `init.parquet` (tidy, one row per "
             "observation; columns in analysis/tidy.py) and `init.json` (settings). skip_scale is shown with "
             "λ = 2 (at λ = 1 it is Post-LN).\n", "- `summary.md`: headline statistics per placement\n"]  # fmt: skip
    index += [f"- `{name}`: {title}\n" for name, title in written]
    atomic_write(out / "README.md", lambda tmp: tmp.write_text("".join(index)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports/init", help="output folder")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per configuration")
    parser.add_argument("--quick", action="store_true", help="6 layers instead of 18")
    parser.add_argument("--redraw", action="store_true", help="redraw figures from an existing init.parquet")
    args = parser.parse_args(argv)
    run_report(Path(args.out), quick=args.quick, seeds=args.seeds, redraw=args.redraw)


if __name__ == "__main__":
    main()
