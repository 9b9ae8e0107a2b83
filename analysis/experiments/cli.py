"""`lnscope check`: run the papers' hypothesis checks, print the table, write JSON (and figures).

    lnscope check                                   # every claim, quick preset (a 2-core CPU)
    lnscope check --paper xiong2020 --out checks.json
    lnscope check --claim takase2022.b2t_mitigates --preset paper --store results
    lnscope check --when init --figures reports/experiments   # PNG + SVG of the experiments run
    lnscope check --list                            # the claim catalogue
    lnscope check --superseded                      # claims replaced by restatements, and why
    lnscope check --catalogue docs/claims.md        # regenerate the catalogue file
    lnscope check --robustness --figures reports    # init-time verdicts over harness choices
    lnscope check --claims my_claims.toml           # your own claims: docs/experiments.md

Exit status 0 when every selected check ran (and its figures were drawn), whatever the verdicts;
2 on bad input; 1 when a computation or a figure failed (the checks that ran are still printed and
written). Registered in analysis/cli.py by `add_commands`.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

from analysis.experiments import EXPERIMENTS, check, select_claims
from analysis.experiments.catalogue import catalogue_lines, catalogue_markdown, check_footer, superseded_lines
from analysis.experiments.claims import PAPERS, WHEN, json_safe
from analysis.experiments.experiment import PRESET_NAMES
from analysis.io import atomic_write, check_writable
from analysis.options import RawDescriptionHelpFormatter, add_store_option, store_from_args
from models.config import unknown_choice


def _names(text: str | None) -> list[str] | None:
    return None if not text else [t.strip() for t in text.split(",") if t.strip()]


def _num(v: object) -> str:
    return "nan" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def format_table(rows: list[dict]) -> str:
    """A plain-text table of check rows (one line each)."""
    header = ("verdict", "statistic", "95% CI", "threshold", "n", "claim")
    lines = []
    for r in rows:
        t = r["threshold"]
        threshold = (
            f"in [{_num(t[0])}, {_num(t[1])}]" if isinstance(t, (list, tuple)) else f"{r['direction']} {_num(t)}"
        )
        lines.append(
            (
                r["verdict"],
                _num(r["statistic"]),
                f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]",
                threshold,
                str(r["n_seeds"]),
                r["id"],
            )
        )
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def _cmd_check(args: argparse.Namespace) -> int:
    if args.superseded:
        print("\n".join(superseded_lines(_names(args.paper))) or "no superseded claims")
        return 0
    from analysis.experiments.claimsfile import claim_frames, load_claims, plot_checks  # lazy: `--help` starts fast

    store = store_from_args(args)
    unknown = [w for w in _names(args.when) or () if w not in WHEN]
    if unknown:
        raise ValueError(unknown_choice("--when", unknown[0], WHEN))
    if args.n_boot < 1:  # before any compute, not after the runs
        raise ValueError(f"--n-boot must be an integer >= 1, got {args.n_boot}")
    if args.claims:  # a claims file of your own: every bad field is named before anything runs
        if args.paper or args.claim or args.catalogue:
            raise ValueError("--claims checks the file's claims: give it without --paper, --claim, --catalogue")
        claims = load_claims(args.claims, store=store)
        claims = [c for c in claims if not _names(args.when) or c.when in _names(args.when)]
        if not claims:
            raise ValueError(f"--when {args.when}: none of the claims in {args.claims} is of that kind")
    else:
        claims = select_claims(papers=_names(args.paper), claim_ids=_names(args.claim), when=_names(args.when))
    if args.list:
        print("\n".join(catalogue_lines(claims)))
        return 0
    if args.catalogue:
        path = Path(args.catalogue)
        atomic_write(path, lambda tmp: tmp.write_text(catalogue_markdown()))
        print(f"wrote {path}")
        return 0
    if args.out and not args.out.endswith(".json"):
        raise ValueError(f"--out must end in .json, got {args.out}")
    for folder in [Path(args.out).parent] * bool(args.out) + [Path(args.figures)] * bool(args.figures):
        check_writable(folder)  # a read-only or full destination is named before compute, not after
    if args.robustness:
        from analysis.experiments.robustness import robustness_command  # lazy: the sweep's module

        options = ("preset", "out", "figures", "n_boot", "seed", "quiet")
        return robustness_command(claims, store=store, **{k: getattr(args, k) for k in options})
    start = time.perf_counter()
    frames = claim_frames(claims, preset=args.preset, store=store, progress=not args.quiet)
    rows = [
        json_safe(
            {
                **check(c, frames[c.experiment], n_boot=args.n_boot, seed=args.seed).to_json(),
                "preset": args.preset,
                **({"citation": c.citation} if c.citation else {}),  # a claims file's own paper
            }
        )
        for c in claims
    ]
    print(format_table(rows))
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("reproduced", "not reproduced", "inconclusive")}
    print(
        f"\n{len(rows)} checks ({args.preset} preset, {time.perf_counter() - start:.0f} s): "
        + ", ".join(f"{n} {v}" for v, n in counts.items())
    )
    print("\n".join(check_footer(rows)))
    if args.out:
        atomic_write(Path(args.out), lambda tmp: tmp.write_text(json.dumps(rows, indent=2) + "\n"))
        print(f"wrote {args.out}")
    status = 0
    if args.figures:
        paths = []
        if args.claims:
            from analysis.plot.figures import save_figure  # lazy: matplotlib only to draw

            paths.append(save_figure(plot_checks(rows), Path(args.figures) / "checks.png"))
        for name, frame in ((n, f) for n, f in frames.items() if n in EXPERIMENTS):  # not a claims file's runs
            try:  # one experiment's broken figure must not cost the others (the checks are already written)
                paths += EXPERIMENTS[name].save_figures(frame, Path(args.figures))
            except Exception as err:  # noqa: BLE001 - reported, and the exit status says so
                print(f"lnscope check: figures of {name} failed: {type(err).__name__}: {err}", file=sys.stderr)
                status = 1
        print(f"wrote {len(paths)} figure files to {args.figures}")
    return status


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `lnscope check` to the `lnscope` command's subparsers."""
    p = subparsers.add_parser(
        "check",
        help="run the papers' hypothesis checks; print the verdicts, write JSON",
        description=__doc__.split("\n\n")[0],
        formatter_class=RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(__doc__.split("\n\n", 1)[1]),
    )
    p.add_argument(
        "--paper", default="", metavar="A,B,...", help=f"comma-separated papers (default: all): {', '.join(PAPERS)}"
    )
    p.add_argument("--claim", default="", metavar="ID,...", help="comma-separated claim ids (see --list)")
    p.add_argument("--when", default="", metavar="A,B", help="comma-separated: init, training (default: both)")
    p.add_argument(
        "--preset",
        default="quick",
        choices=PRESET_NAMES,
        help="quick: 2-core CPU, minutes; paper: the papers' sizes (GPU); tiny: a smoke run",
    )
    p.add_argument(
        "--out", default="", metavar="FILE", help="write the checks as JSON (a list of objects) to this .json file"
    )
    add_store_option(p, "folder of stored jobs: reused by config hash, new ones added")
    p.add_argument(
        "--claims", default="", metavar="FILE", help="check the claims of this TOML file (docs/experiments.md)"
    )
    p.add_argument(
        "--figures",
        default="",
        metavar="DIR",
        help="draw the experiments' figures (PNG, SVG; --claims: checks.png) into this folder",
    )
    p.add_argument("--n-boot", type=int, default=2000, metavar="N", help="bootstrap resamples per check")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the bootstrap resampling")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="print the claim catalogue (of the selection) and exit")
    p.add_argument(
        "--catalogue", default="", metavar="FILE", help="write the claim catalogue as Markdown to this file and exit"
    )
    p.add_argument(
        "--robustness",
        action="store_true",
        help="check each init-time claim over a grid of harness choices (pos, init, d_model) and say which flips it",
    )
    p.add_argument("--superseded", action="store_true", help="list the superseded claims (of --paper), why, and exit")
    p.set_defaults(func=_cmd_check)
