"""The `lnscope` command line.

    lnscope probe --arch encdec --placement post --layers 18 --d-model 64 --heads 4 --d-ff 256 \\
        --seeds 8 --out post18.parquet
    lnscope report --out reports/init
    lnscope list

Options are generated from the config dataclasses (analysis.options: `lnscope probe` from
`models.ModelConfig`, `lnscope train` from it and the training configs), so every config field is
settable and the CLI cannot drift from the API; validation (with the valid choices) is the config's own.
Each room's subcommands live in that room (`analysis/train/cli.py`, `analysis/experiments/cli.py`) and
are registered below.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from analysis.allocator import ensure_preloaded
from analysis.experiments.cli import add_commands as add_experiment_commands
from analysis.io import write_run
from analysis.options import add_model_options, dataclass_from_args
from analysis.probe.probes import CHEAP_PROBES, PROBES
from analysis.runtime import WORKERS_VAR, check_environment, configure_compilation_cache
from analysis.train.cli import add_commands as add_train_commands
from models import ARCHS, NORMS, PLACEMENTS, ModelConfig


def _config_from(args: argparse.Namespace) -> ModelConfig:
    return dataclass_from_args(ModelConfig, args)


def _cmd_probe(args: argparse.Namespace) -> int:
    from analysis.probe.api import probe_at_init

    cfg = _config_from(args)
    probes = tuple(args.probes.split(",")) if args.probes else CHEAP_PROBES
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    out = Path(args.out)
    if out.suffix != ".parquet":
        raise ValueError(f"--out must end in .parquet, got {out}")
    from analysis.io import check_writable
    from analysis.memory import check_fits, probe_estimate

    check_writable(out.parent)  # a read-only or full destination is named before compute, not after
    check_fits(probe_estimate(cfg, args.seeds, args.batch_size, args.seq_len, probes=probes, seed_chunk=args.seed_chunk,
                              streams=args.streams), "lnscope probe")  # before compute: never a silent hang
    start = time.perf_counter()
    frame = probe_at_init(
        cfg, seeds=seeds, batch_size=args.batch_size, seq_len=args.seq_len, probes=probes,
        run=args.run or out.stem, seed_chunk=args.seed_chunk, streams=args.streams,
    )  # fmt: skip
    meta = {
        "model": dataclasses.asdict(cfg),
        "probes": list(probes),
        "seeds": list(seeds),
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "seconds": round(time.perf_counter() - start, 2),
        "command": " ".join(sys.argv),
    }
    write_run(frame, meta, out)
    print(f"wrote {len(frame)} rows to {out} and {out.with_suffix('.json')} ({meta['seconds']} s)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from analysis.report.build import build_report, default_experiments, select_experiments
    from analysis.report.init_report import AtlasSettings

    layers = 6 if args.quick else args.layers
    placements = tuple(p.strip() for p in args.placements.split(",")) if args.placements else None
    atlas = AtlasSettings(layers=layers, seeds=args.seeds, **({"placements": placements} if placements else {}))
    wanted = args.experiments.strip()
    experiments = {} if wanted == "none" else select_experiments(wanted, default_experiments())
    preset = args.preset or ("tiny" if args.quick else "quick")
    out = Path(args.out or f"reports/{preset}")
    built = build_report(out, preset=preset, atlas=atlas, experiments=experiments,
                         store=Path(args.store) if args.store else None, redraw=args.redraw,
                         reuse=not args.recompute)  # fmt: skip
    return 1 if built.failed else 0


def _cmd_list(args: argparse.Namespace) -> int:
    print("placements:")
    for name, p in PLACEMENTS.items():
        print(f"  {name:12s} {p.reference}")
    print("norms:      " + ", ".join(NORMS))
    print("archs:      " + ", ".join(ARCHS))
    print("probes:")
    for name, text in PROBES.items():
        print(f"  {name:16s} {text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lnscope", description="Gradient dynamics of layer-norm placements.")
    sub = parser.add_subparsers(dest="command", required=True)

    probe = sub.add_parser("probe", help="probe models at initialization over seeds; write parquet + JSON",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    probe.add_argument("--seeds", type=int, default=4, help="number of seeds (models), in one compiled program")
    probe.add_argument("--seed-start", type=int, default=0, help="first seed")
    probe.add_argument("--seed-chunk", type=int, default=None,
                       help="vmap this many seeds at a time (default: all on an accelerator, 1 on a CPU)")
    probe.add_argument("--streams", type=int, default=None,
                       help="seed groups computed at once on threads (default: one per core on a CPU, 1 on an accelerator)")
    probe.add_argument("--batch-size", type=int, default=8, help="random-token batch size")
    probe.add_argument("--seq-len", type=int, default=32, help="sequence length of the batch")
    probe.add_argument("--probes", default="", help=f"comma-separated subset of: {', '.join(PROBES)} (default: the cheap ones)")
    probe.add_argument("--out", required=True, help="output .parquet (a .json of the config is written next to it)")
    probe.add_argument("--run", default="", help="run name stored in the table (default: the output file's stem)")
    add_model_options(probe)
    probe.set_defaults(func=_cmd_probe)

    report = sub.add_parser("report", help="run the atlas, the experiments and their checks; write one HTML report (make report)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    report.add_argument("--out", default="", help="output folder (default: reports/<preset>); index.html is the report")
    report.add_argument("--preset", default=None, choices=("tiny", "quick", "paper"),
                        help="experiments' preset: quick (the default: 2-core CPU, minutes), paper (the papers' sizes, "
                             "a GPU), tiny (a smoke run; the default with --quick)")
    report.add_argument("--experiments", default="all", help="comma-separated experiment names, all, or none")
    report.add_argument("--store", default="", help="folder of reusable experiment results (default: <out>/store)")
    report.add_argument("--seeds", type=int, default=3, help="seeds per configuration of the initialization atlas")
    report.add_argument("--layers", type=int, default=18, help="depth of the atlas' encdec (each stack) and decoder-only models")
    report.add_argument("--quick", action="store_true", help="a smoke run: a 6-layer atlas and the tiny preset")
    report.add_argument("--placements", default="", help=f"atlas placements, comma-separated subset of: {', '.join(PLACEMENTS)} (default: all)")
    report.add_argument("--redraw", action="store_true", help="figures, checks and pages again from <out>/data, no computation")
    report.add_argument("--recompute", action="store_true", help="recompute the atlas even if a stored one has the same settings")
    report.set_defaults(func=_cmd_report)

    listing = sub.add_parser("list", help="list placements, norms, archs and probes")
    listing.set_defaults(func=_cmd_list)

    add_train_commands(sub)
    add_experiment_commands(sub)
    return parser


def prepare_process() -> None:
    """What a program run of lnscope sets up before any work: mimalloc preloaded (a one-time re-exec,
    analysis.allocator) and JAX's persistent compilation cache (analysis.runtime)."""
    ensure_preloaded()
    configure_compilation_cache()
    os.environ.setdefault(WORKERS_VAR, "auto")  # a study's jobs on one process per core (analysis.runtime)


def main(argv: list[str] | None = None, *, prepare: bool | None = None) -> int:
    """The `lnscope` command; `argv=None` means run as a program (sys.argv, and `prepare_process`,
    which `prepare=True` asks for with an explicit argv)."""
    parser = build_parser()
    try:
        if argv is None or prepare:
            prepare_process()
        args = parser.parse_args(argv)
        check_environment()
        return args.func(args)
    except ValueError as err:  # bad input: a clear message, no traceback
        parser.exit(2, f"lnscope: error: {err}\n")
    except KeyboardInterrupt:  # Ctrl-C: stored results stay (every file is written whole), workers are ended
        print("lnscope: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped early (`lnscope check --list | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except OSError as err:  # disk full, read-only store, ...: what, where, what to do (analysis.io)
        import logging

        from analysis.io import describe_os_error

        print(f"lnscope: error: {describe_os_error(err)}", file=sys.stderr, flush=True)
        if argv is None:  # a program ending: what a failed writer's threads report on the way out repeats this line
            logging.disable(logging.CRITICAL)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
