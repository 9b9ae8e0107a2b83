"""XLA compiler options against a first result's compile, and whether they keep every bit (issue 26).

    python -m benchmarks.compile_options --rounds 2 -- "" "--xla_llvm_disable_expensive_passes=true"
    python -m benchmarks.compile_options --jobs sample -- "" "--xla_llvm_disable_expensive_passes=true"

Each flag set (an XLA_FLAGS string; "" is XLA's defaults) runs in fresh processes, one after another
and the sets alternating round by round (a shared machine's load moves; alternating spreads it over
every set), each process with an empty compilation cache of its own, so each compiles. A process
computes the benchmarks' first result (`probe_at_init` of the 18-layer encoder-decoder: one program's
compile) and prints its CPU time, wall time, XLA's compile time and a digest of the frame's bytes;
with `--jobs sample`, a sample of the report's jobs too (each placement's small atlas study, one
training job, the coordinate check), one digest each. A set keeps the numbers only if every digest
equals the defaults'. Prints one JSON object: per set, the rounds and whether its digests matched.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import hashlib, json, os, sys, time
import jax
import numpy as np

compile_s = []
def _listen(event, duration, **_):
    if event == "/jax/core/compile/backend_compile_duration":
        compile_s.append(duration)
jax.monitoring.register_event_duration_secs_listener(_listen)

def digest(frame):
    # the values' bytes and every other column's text: a single bit anywhere changes it
    values = np.ascontiguousarray(frame["value"].to_numpy(np.float64))
    other = frame.drop(columns=["value"]).astype(str).to_csv(index=False).encode()
    return hashlib.sha256(values.tobytes() + other).hexdigest()[:16]

from analysis.probe.api import probe_at_init
from models import ModelConfig
cfg = ModelConfig(arch="encdec", layers=18, d_model=64, d_ff=256)
c0, t0 = time.process_time(), time.perf_counter()
frame = probe_at_init(cfg)
result = {"first_cpu_s": time.process_time() - c0, "first_wall_s": time.perf_counter() - t0,
          "first_compile_s": sum(compile_s), "first_digest": digest(frame), "jobs": {}}
if sys.argv[1] == "sample":
    from benchmarks.compile_options import sample_jobs
    for name, job in sample_jobs():
        c0 = time.process_time()
        result["jobs"][name] = {"digest": digest(job.compute()), "cpu_s": round(time.process_time() - c0, 2)}
        jax.clear_caches()
print(json.dumps(result))
"""


def sample_jobs() -> list[tuple[str, Any]]:
    """(name, job) of the report's jobs whose bits a compiler option must keep: each placement's decoder
    atlas study, the first job of each other kind (training, coordinate check, LayerNorm backward)."""
    from analysis.experiments import EXPERIMENTS
    from analysis.experiments.atlas import AtlasSettings, atlas_experiment

    picked: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for job in atlas_experiment(AtlasSettings()).jobs("quick"):
        placement = job.model.placement
        if job.model.arch == "decoder" and placement not in seen:
            seen.add(placement)
            picked.append((f"atlas/{placement}", job))
    kinds: dict[str, Any] = {"train": None, "coordcheck": None, "ln_backward": None}
    for name, experiment in EXPERIMENTS.items():
        if name == "atlas":
            continue
        for job in experiment.jobs("quick"):
            if job.kind in kinds and kinds[job.kind] is None:
                kinds[job.kind] = (f"{name}/{job.kind}", job)
    picked += [pair for pair in kinds.values() if pair is not None]
    return picked


def run_once(flags: str, jobs: str) -> dict[str, Any]:
    """One fresh process with XLA_FLAGS=`flags` and an empty compilation cache of its own."""
    with tempfile.TemporaryDirectory(prefix="lnscope-compile-options-") as cache:
        env = {**os.environ, "XLA_FLAGS": flags, "JAX_COMPILATION_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        env.pop("LNSCOPE_COMPILATION_CACHE", None)
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, jobs], capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600
        )
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("flag_sets", nargs="+", help='XLA_FLAGS strings; "" = the defaults (compared against)')
    parser.add_argument("--rounds", type=int, default=1, help="processes per flag set, alternating")
    parser.add_argument("--jobs", choices=("none", "sample"), default="none", help="also digest the report's sample")
    args = parser.parse_args(argv)
    if "" not in args.flag_sets:
        args.flag_sets = ["", *args.flag_sets]
    rounds: dict[str, list[dict[str, Any]]] = {flags: [] for flags in args.flag_sets}
    for _ in range(args.rounds):
        for flags in args.flag_sets:
            rounds[flags].append(run_once(flags, args.jobs))
            print(json.dumps({"flags": flags, **rounds[flags][-1]}), file=sys.stderr, flush=True)
    reference = rounds[""][0]
    summary = {}
    for flags, runs in rounds.items():
        same = all(
            r.get("first_digest") == reference.get("first_digest")
            and {k: v["digest"] for k, v in r.get("jobs", {}).items()}
            == {k: v["digest"] for k, v in reference.get("jobs", {}).items()}
            for r in runs
        )
        summary[flags or "(defaults)"] = {"same_bits": same, "rounds": runs}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
