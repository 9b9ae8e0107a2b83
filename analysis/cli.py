"""The `lnscope` command line.

    lnscope probe --arch encdec --placement post --layers 18 --d-model 64 --heads 4 --d-ff 256 \\
        --seeds 8 --out post18.parquet
    lnscope report --out reports/init
    lnscope list

Model options are generated from `models.ModelConfig`'s fields, so every config field is settable and
the CLI cannot drift from the API; validation (with the valid choices) is the config's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import typing
from pathlib import Path

from analysis.allocator import ensure_preloaded
from analysis.io import write_run
from analysis.probe.probes import CHEAP_PROBES, PROBES
from models import ARCHS, NORMS, PLACEMENTS, ModelConfig
from models import config as config_module

_CHOICES = {
    "arch": ARCHS,
    "placement": tuple(PLACEMENTS),
    "enc_placement": tuple(PLACEMENTS),
    "norm": tuple(NORMS),
    "activation": config_module.ACTIVATIONS,
    "init": config_module.INITS,
    "pos": config_module.POSITIONS,
    "dtype": config_module.DTYPES,
    "admin_init": config_module.ADMIN_INITS,
}


def _field_help() -> dict[str, str]:
    """One line per field, taken from ModelConfig's docstring ("name: text" entries)."""
    helps: dict[str, str] = {}
    doc = ModelConfig.__doc__ or ""
    current = None
    for line in doc.splitlines():
        stripped = line.strip()
        head, sep, text = stripped.partition(":")
        names = [n.strip().strip("`") for n in head.split(",")]
        if sep and all(n.isidentifier() for n in names) and any(n in ModelConfig.__dataclass_fields__ for n in names):
            current = names
            for n in names:
                helps[n] = text.strip()
        elif current and stripped:
            for n in current:
                helps[n] += " " + stripped
        else:
            current = None
    return helps


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    helps = _field_help()
    hints = typing.get_type_hints(ModelConfig)
    group = parser.add_argument_group("model (models.ModelConfig fields)")
    for f in dataclasses.fields(ModelConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        text = helps.get(f.name, "").replace("%", "%%")  # argparse formats help strings with %
        if hint is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=f.default, help=text)
            continue
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint) if typing.get_args(hint) else hint
        kwargs: dict = {"dest": f.name, "default": f.default, "type": base, "help": text}
        if f.name in _CHOICES:
            kwargs["choices"] = _CHOICES[f.name]
        group.add_argument(flag, **kwargs)


def _config_from(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ModelConfig)})


def _cmd_probe(args: argparse.Namespace) -> int:
    from analysis.probe.api import probe_at_init

    cfg = _config_from(args)
    probes = tuple(args.probes.split(",")) if args.probes else CHEAP_PROBES
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    out = Path(args.out)
    if out.suffix != ".parquet":
        raise ValueError(f"--out must end in .parquet, got {out}")
    start = time.perf_counter()
    frame = probe_at_init(
        cfg, seeds=seeds, batch_size=args.batch_size, seq_len=args.seq_len, probes=probes,
        run=args.run or out.stem, seed_chunk=args.seed_chunk,
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
    from analysis.report.init_report import run_report

    layers = 6 if args.quick else args.layers
    placements = [p.strip() for p in args.placements.split(",")] if args.placements else None
    run_report(Path(args.out), layers=layers, seeds=args.seeds, placements=placements, redraw=args.redraw)
    return 0


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
    probe.add_argument("--seeds", type=int, default=4, help="number of seeds (models), vmapped in one call")
    probe.add_argument("--seed-start", type=int, default=0, help="first seed")
    probe.add_argument("--seed-chunk", type=int, default=None, help="vmap this many seeds at a time (memory)")
    probe.add_argument("--batch-size", type=int, default=8, help="random-token batch size")
    probe.add_argument("--seq-len", type=int, default=32, help="sequence length of the batch")
    probe.add_argument("--probes", default="", help=f"comma-separated subset of: {', '.join(PROBES)} (default: the cheap ones)")
    probe.add_argument("--out", required=True, help="output .parquet (a .json of the config is written next to it)")
    probe.add_argument("--run", default="", help="run name stored in the table (default: the output file's stem)")
    _add_model_options(probe)
    probe.set_defaults(func=_cmd_probe)

    report = sub.add_parser("report", help="the initialization-time report of every placement (make report)",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    report.add_argument("--out", default="reports/init", help="output folder")
    report.add_argument("--seeds", type=int, default=3, help="seeds per configuration")
    report.add_argument("--layers", type=int, default=18, help="depth of the encdec (each stack) and decoder-only models")
    report.add_argument("--quick", action="store_true", help="6 layers instead of --layers (a smoke run)")
    report.add_argument("--placements", default="", help=f"comma-separated subset of: {', '.join(PLACEMENTS)} (default: all)")
    report.add_argument("--redraw", action="store_true", help="redraw figures from an existing init.parquet")
    report.set_defaults(func=_cmd_report)

    listing = sub.add_parser("list", help="list placements, norms, archs and probes")
    listing.set_defaults(func=_cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # run as a program (not called from Python): preload mimalloc (analysis.allocator)
        ensure_preloaded()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad input: a clear message, no traceback
        parser.exit(2, f"lnscope: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
