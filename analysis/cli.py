"""The `lnscope` command line.

    lnscope probe --arch encdec --placement post --layers 18 --d-model 64 --heads 4 --d-ff 256 \\
        --seeds 8 --out post18.parquet
    lnscope probe --placement pre --layers 6      # -> <store>/probes/decoder-pre-6L-<id>.parquet
    lnscope report --out reports/init
    lnscope report --probes                       # the probe outputs in the store

One store is shared by every command (analysis.options.default_store: $LNSCOPE_STORE, else
./lnscope-store, or --store): probe outputs in probes/, training runs in runs/, the experiments' jobs
in jobs/, so `make report` then `lnscope check` computes nothing twice.
    lnscope list

Options are generated from the config dataclasses (analysis.options: `lnscope probe` from
`models.ModelConfig`, `lnscope train` from it and the training configs), so every config field is
settable and the CLI cannot drift from the API; validation (with the valid choices) is the config's own.
Each room's subcommands live in that room (`analysis/train/cli.py`, `analysis/experiments/cli.py`,
`analysis/report/cli.py`) and are registered below; this module is the top room and nothing imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from analysis.command import run_command
from analysis.experiments.cli import add_commands as add_experiment_commands
from analysis.identity import content_id
from analysis.io import check_writable, write_run
from analysis.memory import check_fits, probe_estimate
from analysis.options import (
    HelpFormatter,
    Parser,
    RawDescriptionHelpFormatter,
    add_model_options,
    add_plan_options,
    add_store_option,
    dataclass_from_args,
    plan_from_args,
    store_from_args,
)
from analysis.probe.api import probe_at_init
from analysis.probe.probes import CHEAP_PROBES, PROBES
from analysis.probe.registry import probe_memory
from analysis.report.cli import add_commands as add_report_commands
from analysis.train.cli import add_commands as add_train_commands
from models import ARCHS, NORMS, PLACEMENTS, ModelConfig


def _config_from(args: argparse.Namespace) -> ModelConfig:
    return dataclass_from_args(ModelConfig, args)


def _default_probe_out(cfg: ModelConfig, args: argparse.Namespace, probes: tuple[str, ...]) -> Path:
    """<store>/probes/<arch>-<placement>-<layers>L-<id>.parquet: the id names what is probed (model,
    seeds, batch, probes), so a different probe never overwrites another, and `lnscope report --probes`
    finds every output there."""
    what = {
        "model": dataclasses.asdict(cfg),
        "seeds": [args.seed_start, args.seeds],
        "batch": [args.batch_size, args.seq_len],
        "probes": sorted(probes),
    }
    name = f"{cfg.arch}-{cfg.placement}-{cfg.layers}L-{content_id(what)[:8]}"
    return store_from_args(args) / "probes" / f"{args.run or name}.parquet"


def _cmd_probe(args: argparse.Namespace) -> int:
    cfg = _config_from(args)
    probes = tuple(args.probes.split(",")) if args.probes else CHEAP_PROBES
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    out = Path(args.out) if args.out else _default_probe_out(cfg, args, probes)
    if out.suffix != ".parquet":
        raise ValueError(f"--out must end in .parquet, got {out}")
    plan = plan_from_args(args)
    check_writable(out.parent)  # a read-only or full destination is named before compute, not after
    check_fits(
        probe_estimate(
            cfg,
            args.seeds,
            args.batch_size,
            args.seq_len,
            probes=probe_memory(probes),
            plan=plan,
            seed_chunk=args.seed_chunk,
        ),
        "lnscope probe",
    )  # before compute: never a silent hang
    start = time.perf_counter()
    frame = probe_at_init(
        cfg,
        seeds=seeds,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        probes=probes,
        run=args.run or out.stem,
        plan=plan,
        seed_chunk=args.seed_chunk,
    )
    meta = {
        "model": dataclasses.asdict(cfg),
        "execution": None if plan is None else plan.to_dict(),
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


def _cmd_list(args: argparse.Namespace) -> int:
    print("placements:")
    width = max(map(len, PLACEMENTS))
    for name, p in PLACEMENTS.items():
        print(f"  {name:{width}s}  {p.reference}" + (f" (also: {', '.join(p.aliases)})" if p.aliases else ""))
    print("norms:      " + ", ".join(NORMS))
    print("archs:      " + ", ".join(ARCHS))
    print("probes:")
    width = max(map(len, PROBES))  # the registry's longest name: every description starts in one column
    for name, probe in PROBES.items():
        print(f"  {name:{width}s}  {probe.description}")
    return 0


# A new user's first commands, under `lnscope --help`.
START_HERE = """\
start here:
  lnscope list                              the placements, norms, archs and probes
  lnscope check --list --paper xiong2020    one paper's claims (drop --list to check them)
  lnscope report                            every experiment checked, one HTML report
  lnscope COMMAND --help                    a command's options and examples

Every command keeps its results in one store: --store, else $LNSCOPE_STORE, else ./lnscope-store.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(  # its subcommands' parsers are Parsers too: one-line errors everywhere
        prog="lnscope",
        description="Gradient dynamics of layer-norm placements.",
        formatter_class=RawDescriptionHelpFormatter,
        epilog=START_HERE,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    probe = sub.add_parser(
        "probe", help="probe models at initialization over seeds; write parquet + JSON", formatter_class=HelpFormatter
    )
    probe.add_argument("--seeds", type=int, default=4, metavar="N", help="number of seeds (models)")
    probe.add_argument("--seed-start", type=int, default=0, metavar="N", help="first seed")
    probe.add_argument(
        "--seed-chunk",
        type=int,
        default=None,
        metavar="N",
        help="vmap this many seeds at a time (default: as --seed-programs says)",
    )
    probe.add_argument("--batch-size", type=int, default=8, metavar="N", help="random-token batch size")
    probe.add_argument("--seq-len", type=int, default=32, metavar="N", help="sequence length of the batch")
    probe.add_argument(
        "--probes",
        default="",
        metavar="A,B,...",
        help="comma-separated probes, see lnscope list (default: the cheap ones)",
    )
    probe.add_argument(
        "--out",
        default="",
        metavar="PATH",
        help="output .parquet; its config goes next to it as .json (default: <store>/probes/<model>-<id>.parquet)",
    )
    add_store_option(probe, "where the output goes without --out (its probes/ folder)")
    probe.add_argument("--run", default="", metavar="TEXT", help="run name in the table (default: the output's stem)")
    add_model_options(probe)
    add_plan_options(probe)
    probe.set_defaults(func=_cmd_probe)

    add_report_commands(sub)

    listing = sub.add_parser("list", help="list placements, norms, archs and probes")
    listing.set_defaults(func=_cmd_list)

    add_train_commands(sub)
    add_experiment_commands(sub)
    return parser


def main(argv: list[str] | None = None, *, prepare: bool | None = None) -> int:
    """The `lnscope` command; `argv=None` means run as a program (sys.argv, and
    `analysis.command.prepare_process`, which `prepare=True` asks for with an explicit argv)."""
    return run_command(build_parser(), argv, prepare=prepare)


if __name__ == "__main__":
    sys.exit(main())
