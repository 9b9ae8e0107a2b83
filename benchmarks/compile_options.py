"""XLA compiler options against a first result's compile, and whether they keep every bit (issue 26).

    python -m benchmarks.compile_options --rounds 2 -- "" "--xla_llvm_disable_expensive_passes=true"
    python -m benchmarks.compile_options --jobs sample -- "" "--xla_llvm_disable_expensive_passes=true"

Each flag set (an XLA_FLAGS string; "" is lnscope's own: XLA's defaults but for the CPU plan's
compile options, analysis.execution.plan.CPU_COMPILER_OPTIONS) runs in fresh processes, one after
another and the sets alternating round by round (a shared machine's load moves; alternating spreads it over
every set), each process with an empty compilation cache of its own, so each compiles. A process
computes the benchmarks' first result (`probe_at_init` of the 18-layer encoder-decoder: one program's
compile) and prints its CPU time, wall time, XLA's compile time and a digest of the frame's bytes,
and the CPU and wall time of a second call (the compiled program's run alone); with `--jobs sample`,
a sample of the report's jobs too (`sample_jobs`: each placement's decoder atlas study, one training
job, coordinate check and LayerNorm backward study), one digest each. A set keeps the numbers only if
every digest equals the defaults'. Prints one JSON object: per set, the rounds and whether its digests matched.

    python -m benchmarks.compile_options --threads

instead compiles the same study program once in this process (no cache) and prints the CPU time
each of its threads spent in the compile: whether XLA compiles the program's LLVM modules on more
than one core (its thread pool) or on the calling thread alone.
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

from benchmarks.args import positive_int

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
c0, t0 = time.process_time(), time.perf_counter()
probe_at_init(cfg)  # compiled: the run alone, which an option may slow
result.update(run_cpu_s=time.process_time() - c0, run_wall_s=time.perf_counter() - t0)
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


def compile_threads() -> dict[str, Any]:
    """One cold compile of the first result's study program; the CPU seconds of each thread of this
    process that spent more than 0.05 s in it (sampled from /proc 20 times a second: a thread that ends
    between two samples loses its last slice), and the compile's CPU and wall time."""
    import threading
    import time

    import jax
    import numpy as np

    from analysis.probe.api import _compiled, study_plan
    from analysis.probe.probes import CHEAP_PROBES, ProbeConfig
    from models import ModelConfig

    jax.config.update("jax_enable_compilation_cache", False)
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for tid in os.listdir("/proc/self/task"):
                try:
                    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                cpu[tid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            time.sleep(0.05)

    cfg = ModelConfig(arch="encdec", layers=18, d_model=64, d_ff=256)
    plan = study_plan(None).replace(seed_programs="per_seed", streams=None)
    lowered = _compiled(cfg, plan, ProbeConfig(probes=CHEAP_PROBES), 8, 32, False, 1).lower(np.uint32(0), None)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    time.sleep(0.2)
    before = dict(cpu)
    caller = str(threading.get_native_id())
    c0, w0 = time.process_time(), time.perf_counter()
    lowered.compile()
    c1, w1 = time.process_time(), time.perf_counter()
    time.sleep(0.2)
    done.set()
    sampler.join()
    spent = {tid: round(s - before.get(tid, 0.0), 2) for tid, s in cpu.items()}
    return {
        "compile_cpu_s": round(c1 - c0, 2),
        "compile_wall_s": round(w1 - w0, 2),
        "caller_thread_s": spent.pop(caller, 0.0),
        "sampler_thread_s": spent.pop(str(sampler.native_id), 0.0),
        "other_threads_s": sorted((s for s in spent.values() if s > 0.05), reverse=True),
        "cpus": len(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", action="store_true", help="each thread's CPU time in one compile, then stop")
    parser.add_argument("flag_sets", nargs="*", help='XLA_FLAGS strings; "" = lnscope\'s own (compared against)')
    parser.add_argument("--rounds", type=positive_int, default=1, help="processes per flag set, alternating")
    parser.add_argument("--jobs", choices=("none", "sample"), default="none", help="also digest the report's sample")
    args = parser.parse_args(argv)
    if args.threads:
        print(json.dumps(compile_threads(), indent=1))
        return
    if not args.flag_sets:
        parser.error('give at least one XLA_FLAGS string (or "" for the defaults alone), or --threads')
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
