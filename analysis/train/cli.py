"""`lnscope train` and `lnscope sweep` (registered in analysis/cli.py by `add_commands`).

    lnscope train --arch decoder --placement pre --layers 2 --task charlm --steps 200 --lr 1e-3 \\
        --schedule constant --warmup-steps 0 --probe-every 25 --seeds 2 --out runs
    lnscope sweep sweep.toml --out runs

Every option of `lnscope train` is generated from the config dataclasses (analysis.options): the
model's from models.ModelConfig, `--task`/`--task-vocab`/... from TaskConfig, `--lr`/`--schedule`/...
from OptimConfig, `--steps`/`--probe-every`/... from TrainConfig. `--seeds N --seed-start S` give the
seeds S..S+N−1, as in `lnscope probe`. `lnscope train` prints the run folder on stdout (a summary
goes to stderr); a run that diverges is a result, and exits with status 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.options import (
    HelpFormatter,
    RawDescriptionHelpFormatter,
    add_dataclass_options,
    add_model_options,
    add_plan_options,
    dataclass_from_args,
    default_store,
    plan_from_args,
)
from analysis.probe.probes import PROBES
from analysis.train.config import OptimConfig, TaskConfig, TrainConfig
from analysis.train.loop import train
from analysis.train.optim import SCHEDULES
from analysis.train.sweep import load_sweep, parse_shard, run_sweep
from analysis.train.tasks import TASKS
from models import ModelConfig

_STORE_DEFAULT = "(default: <store>/runs, the store every lnscope command shares: $LNSCOPE_STORE or ./lnscope-store)"


def _runs_folder(args: argparse.Namespace) -> Path:
    """--out, else the shared store's runs/ (analysis.options.default_store), where `lnscope report --runs` looks."""
    return Path(args.out) if args.out else default_store() / "runs"


def _choices() -> dict:
    return {
        "task": {"name": tuple(TASKS)},
        "optim": {"schedule": tuple(SCHEDULES)},
        "train": {"probes": tuple(PROBES), "expensive_probes": tuple(PROBES)},
    }


def _add_train_options(parser: argparse.ArgumentParser) -> None:
    choices = _choices()
    parser.add_argument("--seeds", type=int, default=1, metavar="N", help="number of seeds")
    parser.add_argument("--seed-start", type=int, default=0, metavar="N", help="first seed")
    parser.add_argument(
        "--out", default=None, metavar="PATH", help=f"store folder; the run goes to PATH/<run id>/ {_STORE_DEFAULT}"
    )
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    _add_seed_options(parser)
    add_dataclass_options(
        parser,
        TrainConfig,
        title="training (analysis.train.TrainConfig fields)",
        choices=choices["train"],
        skip=("seeds",),
        prefix="train.",
    )
    add_dataclass_options(
        parser,
        OptimConfig,
        title="optimizer (analysis.train.OptimConfig fields)",
        choices=choices["optim"],
        prefix="optim.",
    )
    add_dataclass_options(
        parser,
        TaskConfig,
        title="task (analysis.train.TaskConfig fields)",
        choices=choices["task"],
        flags={"name": "task", "vocab": "task-vocab"},
        prefix="task.",
    )
    add_model_options(parser)
    add_plan_options(parser, skip=("seed_programs", "streams"))


def _add_seed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vmap-seeds",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="seeds in one vmapped program, or a program each (default: the plan's; a resumed run as it started)",
    )
    parser.add_argument(
        "--streams", type=int, default=None, metavar="N", help="per-seed programs run at once on threads"
    )


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of parsed `lnscope train` options."""
    if args.seeds < 1 or args.seed_start < 0:
        raise ValueError(f"--seeds must be >= 1 and --seed-start >= 0, got {args.seeds} and {args.seed_start}")
    return dataclass_from_args(
        TrainConfig,
        args,
        prefix="train.",
        model=dataclass_from_args(ModelConfig, args),
        task=dataclass_from_args(TaskConfig, args, prefix="task."),
        optim=dataclass_from_args(OptimConfig, args, prefix="optim."),
        seeds=tuple(range(args.seed_start, args.seed_start + args.seeds)),
    )


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    result = train(
        cfg,
        _runs_folder(args),
        plan=plan_from_args(args),
        progress=args.progress,
        vmap_seeds=args.vmap_seeds,
        streams=args.streams,
    )
    curves = result.curves
    val = curves[(curves["quantity"] == "val_loss")].sort_values("step").groupby("seed")["value"].last()
    for seed, status in result.status.items():
        where = f" at step {result.diverged_step[seed]}" if status == "diverged" else ""
        loss = f", last val_loss {val[seed]:.4f}" if seed in val.index else ""
        print(f"seed {seed}: {status}{where}{loss}", file=sys.stderr)
    if result.skipped:
        print("(finished earlier: read back from the store, not recomputed)", file=sys.stderr)
    print(result.folder)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    shard = parse_shard(args.shard) if args.shard is not None else None  # a bad i/N is refused first
    sweep = load_sweep(args.file)  # parsed and validated before any compute
    table = run_sweep(
        sweep,
        _runs_folder(args),
        plan=plan_from_args(args),
        progress=args.progress,
        vmap_seeds=args.vmap_seeds,
        streams=args.streams,
        shard=shard,
    )
    with_text = table.drop(columns=["folder"]).to_string(index=False)
    print(with_text, file=sys.stderr)
    print(_runs_folder(args))
    return 0


TRAIN_EXAMPLES = """\
  lnscope train --placement post --layers 6 --steps 200 --seeds 2       # -> <store>/runs/<run id>
  lnscope train --task charlm --steps 2000 --checkpoint-every 100       # resumable
  lnscope report --runs                                                 # figures of the runs
"""


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `train` and `sweep` on the `lnscope` parser's subparsers."""
    train = subparsers.add_parser(
        "train",
        help="train seeds of one config with probes in the step; print the run folder",
        description="Train the seeds of one configuration (every option below is a config field), with the\n"
        "probes measured inside the training step. Prints the run folder on stdout, a summary on stderr;\n"
        "a run that diverges is a result (exit status 0). With --checkpoint-every N, a run stopped\n"
        "midway resumes from its last checkpoint when the same command is run again.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=RawDescriptionHelpFormatter,
    )
    _add_train_options(train)
    train.set_defaults(func=_cmd_train)

    sweep = subparsers.add_parser(
        "sweep", help="train a grid of configs from a TOML/JSON file (resumable)", formatter_class=HelpFormatter
    )
    sweep.add_argument("file", help="sweep file (.toml or .json): [base] and [grid] tables")
    sweep.add_argument("--out", default=None, metavar="PATH", help=f"store folder of the runs {_STORE_DEFAULT}")
    sweep.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar with ETA")
    sweep.add_argument(
        "--shard",
        metavar="i/N",
        default=None,
        help="compute only shard i of N (grid points whose index is i modulo N), one task of a job array: "
        "--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; shards may share --out",
    )
    _add_seed_options(sweep)
    add_plan_options(sweep, skip=("seed_programs", "streams"))
    sweep.set_defaults(func=_cmd_sweep)
