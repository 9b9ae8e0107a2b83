"""How many distinct programs the report compiles, and which jobs cost most (issue 26).

    python -m benchmarks.report_programs                 # counts, from the job lists alone (no compute)
    python -m benchmarks.report_programs --measure 1     # also computes 1 job of each kind per experiment

A cold `make report` computes the atlas' quick jobs and every other experiment's (analysis.report.build),
each distinct job once (`job_key`); on a CPU nearly every job is one XLA compile and a short run, so the
number of distinct programs, not the number of jobs, sets the cold report's time. An init job's study
program is keyed by its model configuration, batch and sequence length, probes and the output-change
step size (analysis.probe.api's compiled program; seeds do not enter it: a program of one seed). The
counts below say how many of those programs would stay if some configuration fields were arguments of
the program instead of constants compiled into it:

- `programs`: as today.
- `without_value_fields`: the ModelConfig fields that are numbers in the equations (VALUE_FIELDS) and
  the output-change step size as arguments.
- `without_placement_constants`: those, and the placements' constants and init gains too (placements
  of one structural signature, tests/models/structural_signatures.py, sharing a program).
- `without_depth`: those, and the depth too (a scanned stack whose length were an argument).

Other job kinds (training, the coordinate check, the learning-rate sweep, the LayerNorm backward
study) compile several programs each (init, step, evaluation); they are counted per distinct
configuration without seeds. `--measure N` computes N jobs of each (experiment, kind) in this process
with an empty compilation cache and reports per job its CPU time and the part spent tracing, lowering
and compiling (jax.monitoring's compile events), and per experiment an estimate of its cold cost
(the measured mean CPU time per job times its distinct jobs).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from typing import Any

# ModelConfig fields that are numbers in the equations (init scales, constants, eps): a program could
# take them as arguments without changing its structure. mix_post_fraction is not one: it decides
# which layers are Post-LN. A None among them selects a code path, so None and a number stay apart.
VALUE_FIELDS = (
    "embed_std",
    "embed_scale",
    "rope_base",
    "norm_eps",
    "residual_scale",
    "skip_lambda",
    "adanorm_scale",
    "adanorm_k",
    "dyt_alpha0",
    "qk_norm_scale",
    "ngpt_alpha_init",
    "completep_alpha",
    "completep_base_layers",
    "deepscalelm_beta2",
    "layerscale_init",
    "derf_alpha0",
    "derf_shift0",
    "dyisru_beta0",
)
DEPTH_FIELDS = ("layers", "enc_layers", "dec_layers")
COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}


def report_jobs() -> list[tuple[str, Any]]:
    """(experiment, job) of a cold report, in its order, each distinct job (`job_key`) once."""
    from analysis.experiments.atlas import AtlasSettings, atlas_experiment
    from analysis.experiments.runs import job_key
    from analysis.report.build import default_experiments

    listed = [("atlas", job) for job in atlas_experiment(AtlasSettings()).jobs("quick")]
    for name, experiment in default_experiments().items():
        listed += [(name, job) for job in experiment.jobs("quick")]
    seen: set[str] = set()
    unique = []
    for name, job in listed:
        key = job_key(job)
        if key not in seen:
            seen.add(key)
            unique.append((name, job))
    return unique


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _placement_representatives() -> dict[str, str]:
    """Each placement's first registry entry of its structural signature (the tests' definition:
    tests/models/structural_signatures.py; entries of one signature differ only in constants)."""
    from tests.models.structural_signatures import PLACEMENT_GROUPS

    return {member: first for first, members in PLACEMENT_GROUPS.items() for member in members}


def _reduced(model: dict[str, Any], fields: tuple[str, ...], placements: dict[str, str] | None) -> dict[str, Any]:
    # a value field keeps only whether it is None (None selects another code path)
    reduced = {k: (v is None if k in fields else v) for k, v in model.items()}
    if placements is not None:
        for name in ("placement", "enc_placement"):
            if reduced.get(name) is not None:
                reduced[name] = placements[reduced[name]]
    return reduced


# The counts' names and what each takes out of a program's key: value fields, placements' constants.
COUNTS = {
    "programs": ((), False),
    "without_value_fields": (VALUE_FIELDS, False),
    "without_placement_constants": (VALUE_FIELDS, True),
    "without_depth": (VALUE_FIELDS + DEPTH_FIELDS, True),
}


def program_keys(job: Any) -> dict[str, Any]:
    """The job's program key per count of COUNTS (today's, then with more fields as arguments)."""
    spec = dict(job.spec())
    spec.pop("seeds", None)
    spec.pop("first_seed", None)
    if "config" in spec:  # a training-like job: its configuration without seeds
        config = dict(spec["config"])
        config.pop("seeds", None)
        spec["config"] = config
        model = config.get("model", {})
    else:
        model = spec.get("model", {})
    representatives = _placement_representatives()
    keys = {}
    for count, (fields, by_structure) in COUNTS.items():
        placements = representatives if by_structure else None
        reduced = dict(spec)
        if fields and spec.get("kind") == "init":
            reduced.pop("output_change_lr", None)
        if "config" in spec:
            reduced["config"] = {**spec["config"], "model": _reduced(model, fields, placements)}
        elif model:
            reduced["model"] = _reduced(model, fields, placements)
        keys[count] = _frozen(reduced)
    return keys


def count_programs(jobs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Jobs and distinct program keys (COUNTS), overall and per kind and experiment."""

    def counts(selected: list[tuple[str, Any]]) -> dict[str, int]:
        keys = [program_keys(job) for _, job in selected]
        return {"jobs": len(selected), **{count: len({k[count] for k in keys}) for count in COUNTS}}

    by_kind = collections.defaultdict(list)
    by_experiment = collections.defaultdict(list)
    for name, job in jobs:
        by_kind[job.kind].append((name, job))
        by_experiment[name].append((name, job))
    return {
        "all": counts(jobs),
        "by_kind": {kind: counts(sel) for kind, sel in by_kind.items()},
        "by_experiment": {name: counts(sel) for name, sel in by_experiment.items()},
    }


def measure(jobs: list[tuple[str, Any]], per_kind: int) -> list[dict[str, Any]]:
    """Compute `per_kind` jobs of each (experiment, kind) here, with an empty compilation cache; per job
    its CPU and wall time and the compile events' seconds (trace, lower, compile: wall time)."""
    import jax

    events: dict[str, float] = collections.defaultdict(float)

    def listen(event: str, duration: float, **_: Any) -> None:
        if event in COMPILE_EVENTS:
            events[COMPILE_EVENTS[event]] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    taken: collections.Counter = collections.Counter()
    rows = []
    for name, job in jobs:
        if taken[(name, job.kind)] >= per_kind:
            continue
        taken[(name, job.kind)] += 1
        events.clear()
        cpu, wall = time.process_time(), time.perf_counter()
        job.compute()
        rows.append(
            {
                "experiment": name,
                "kind": job.kind,
                "cpu_s": round(time.process_time() - cpu, 2),
                "wall_s": round(time.perf_counter() - wall, 2),
                **{k: round(v, 2) for k, v in events.items()},
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        jax.clear_caches()  # the next job compiles its own programs, as in a fresh worker
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", type=int, default=0, help="jobs computed per experiment and kind (0: none)")
    args = parser.parse_args(argv)
    if args.measure < 0:
        parser.error(f"--measure must be >= 0, got {args.measure}")
    jobs = report_jobs()
    result: dict[str, Any] = count_programs(jobs)
    if args.measure:
        import jax

        from analysis.runtime import configure_compilation_cache

        with tempfile.TemporaryDirectory(prefix="lnscope-report-programs-") as cache:
            os.environ["JAX_COMPILATION_CACHE_DIR"] = cache  # the cache as the report has it, empty
            jax.config.update("jax_enable_compilation_cache", True)
            configure_compilation_cache()
            rows = measure(jobs, args.measure)
        result["measured"] = rows
        cpu: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        for row in rows:
            cpu[(row["experiment"], row["kind"])].append(row["cpu_s"])
        estimate: dict[str, float] = collections.defaultdict(float)
        for name, job in jobs:
            sample = cpu.get((name, job.kind))
            if sample:
                estimate[name] += sum(sample) / len(sample)
        result["estimated_cpu_s"] = {k: round(v, 1) for k, v in sorted(estimate.items(), key=lambda kv: -kv[1])}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
