"""A user's own probed step, outside lnscope's programs: the speed a script or a notebook gets.

The step as a user writes it with the public API (benchmarks.steps: `optax.adam` and
`probe_program_with_grads` with `analysis.probe.STEP_PROBES`; decoder Pre-LN, d=128, 6 layers,
batch 8 x 64) in fresh processes that do not re-execute themselves, alternating: plain glibc malloc
(what a plain `python my_script.py` or the default Jupyter kernel gets) and mimalloc preloaded
through the environment (what lnscope's Jupyter kernel, `python -m analysis.allocator kernel`, or
`LD_PRELOAD=$(python -m analysis.allocator)` gives). Prints one JSON line per process and the
medians; numbers go to benchmarks/README.md.

    python -m benchmarks.user_step                 # 2 rounds of both
    python -m benchmarks.user_step --rounds 1 --steps 3 --layers 2 --d-model 16   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
import jax
from analysis.allocator import active
from analysis.probe import STEP_PROBES
from analysis.probe.loss import random_batch
from benchmarks.steps import StepPair, median_ms
from benchmarks.suite import decoder_config
layers, d_model, steps = map(int, sys.argv[1:4])
with jax.numpy_dtype_promotion("standard"):
    pair = StepPair(decoder_config(layers, d_model), STEP_PROBES, 8, 64)
    pair.compile()
    times = pair.round(steps)
medians = {f"{name}_ms": median_ms(times[name]) for name in ("plain", "probed")}
print(json.dumps({"mimalloc": active(), **medians}))
"""


def run_child(preload: bool, layers: int, d_model: int, steps: int) -> dict:
    """One fresh process; `preload`: mimalloc through LD_PRELOAD, as lnscope's kernel sets it."""
    from analysis.allocator import OPT_OUT_VAR, REEXEC_VAR, library_path

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", REEXEC_VAR, OPT_OUT_VAR)}
    env["PYTHONPATH"] = str(ROOT)
    if preload:
        env["LD_PRELOAD"] = str(library_path())
    argv = [sys.executable, "-c", CHILD, str(layers), str(d_model), str(steps)]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.user_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind per process")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=128)
    args = parser.parse_args(argv)
    rows = {"glibc": [], "mimalloc": []}
    for _ in range(args.rounds):
        for name in rows:
            row = run_child(name == "mimalloc", args.layers, args.d_model, args.steps)
            if row["mimalloc"] != (name == "mimalloc"):
                raise RuntimeError(f"the {name} process reported mimalloc {row['mimalloc']}")
            print(json.dumps({"allocator": name, **row}), flush=True)
            rows[name].append(row)
    summary = {
        name: {k: statistics.median(r[k] for r in got) for k in ("plain_ms", "probed_ms")} for name, got in rows.items()
    }
    summary["load"] = os.getloadavg()[0]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
