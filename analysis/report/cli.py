"""`lnscope report`: run the atlas, the experiments and their checks; write one HTML report.

    lnscope report --quick --out /tmp/smoke          # the papers' experiments
    lnscope report --runs lnscope-store/runs         # your training runs or sweep
    lnscope report --probes post.parquet pre.parquet # your `lnscope probe` outputs

Registered in analysis/cli.py by `add_commands`; `python -m analysis.report [options]` runs the same
command on its own (`main`).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from analysis.command import run_command
from analysis.experiments.atlas import AtlasSettings
from analysis.io import check_writable
from analysis.options import Parser, RawDescriptionHelpFormatter, add_store_option, store_from_args


def _own_data(args: argparse.Namespace) -> int:
    """`--runs` / `--probes`: the report of your own training runs and probe outputs (analysis.report.runs)."""
    store = store_from_args(args)
    runs = None if args.runs is None else Path(args.runs or store / "runs")
    probes = args.probes or []
    if args.probes == []:  # --probes alone: every probe output in the store
        probes = sorted((store / "probes").glob("*.parquet"))
        if not probes:
            raise ValueError(f"--probes without files reads {store / 'probes'}/*.parquet, and there is none")
    out = Path(args.out or "reports/own")
    check_writable(out)  # a read-only or full destination is named before anything is read or drawn
    from analysis.report.runs import build_runs_report  # lazy: matplotlib only to draw

    build_runs_report(out, runs=runs, probes=probes)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    if args.runs is not None or args.probes is not None:
        return _own_data(args)
    # lazy: the report's build loads matplotlib, so `lnscope --help` starts fast
    from analysis.report.build import build_report, default_experiments, select_experiments

    layers = args.layers if args.layers is not None else (6 if args.quick else 18)
    placements = tuple(p.strip() for p in args.placements.split(",")) if args.placements else None
    atlas = AtlasSettings(layers=layers, seeds=args.seeds, **({"placements": placements} if placements else {}))
    wanted = args.experiments.strip()
    experiments = {} if wanted == "none" else select_experiments(wanted, default_experiments())
    preset = args.preset or ("tiny" if args.quick else "quick")
    out = Path(args.out or f"reports/{preset}")
    store = store_from_args(args)
    if not args.redraw:
        for folder in (out, store):
            check_writable(folder)  # a read-only or full destination is named before compute, not after
    built = build_report(
        out,
        preset=preset,
        atlas=atlas,
        experiments=experiments,
        store=store,
        redraw=args.redraw,
        reuse=not args.recompute,
        robustness=Path(args.robustness) if args.robustness else None,
    )
    return 1 if built.failed else 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `lnscope report` to the `lnscope` command's subparsers."""
    report = sub.add_parser(
        "report",
        help="run the atlas, the experiments and their checks; write one HTML report",
        description=__doc__.split("\n\n")[0] + "\nWhat it computes is kept in the store and reused (docs/report.md).",
        epilog="lnscope report                                   # the quick preset -> reports/quick/index.html\n"
        + textwrap.dedent(__doc__.split("\n\n")[1]),
        formatter_class=RawDescriptionHelpFormatter,
    )
    report.add_argument(
        "--out",
        default="",
        metavar="PATH",
        help="output folder; index.html is the report (default: reports/<preset>; reports/own with --runs, --probes)",
    )
    report.add_argument(
        "--preset",
        default=None,
        choices=("tiny", "quick", "paper"),
        help="experiments' sizes: quick (a CPU), paper (a GPU), tiny (smoke; the default with --quick)",
    )
    report.add_argument(
        "--experiments", default="all", metavar="A,B,...", help="comma-separated experiment names, all, or none"
    )
    add_store_option(report, "folder of reusable results")
    report.add_argument(
        "--runs",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="report your training runs in DIR (a store or a sweep's --out; no DIR: <store>/runs), not the papers",
    )
    report.add_argument(
        "--probes",
        nargs="*",
        default=None,
        metavar="PATH",
        help="report these lnscope probe outputs (.parquet; none given: <store>/probes/*.parquet)",
    )
    report.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds per configuration of the atlas")
    report.add_argument(
        "--layers",
        type=int,
        default=None,
        metavar="N",
        help="depth of the atlas' models, each stack (default: 18; 6 with --quick)",
    )
    report.add_argument("--quick", action="store_true", help="a smoke run: a 6-layer atlas and the tiny preset")
    report.add_argument(
        "--placements",
        default="",
        metavar="A,B,...",
        help="atlas placements, comma-separated; see lnscope list (default: all)",
    )
    report.add_argument(
        "--robustness",
        default="",
        metavar="FILE",
        help="a lnscope check --robustness --out FILE result: its verdict robustness joins the claims table",
    )
    report.add_argument("--redraw", action="store_true", help="figures, checks and pages again from <out>/data")
    report.add_argument("--recompute", action="store_true", help="recompute a stored atlas with the same settings")
    report.set_defaults(func=_cmd_report)


def main(argv: list[str], *, prepare: bool | None = None) -> int:
    """`lnscope report` with `argv` as its options (`python -m analysis.report`); `prepare` as in
    analysis.command.run_command."""
    parser = Parser(prog="lnscope", description=__doc__.split("\n\n")[0])
    add_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser, ["report", *argv], prepare=prepare)
