"""Training benchmark: the cost of probing every 10 steps, and training throughput in tokens/s.

    python -m benchmarks.training [--smoke] [--rounds N] [--out benchmarks/results/training.json]

Model: decoder-only Pre-LN, 12 layers, d_model 128, 4 heads, FFN 512, vocabulary 256 (the PyTorch
calibration's width), on the `markov` task, batch 8 x 64 tokens, one seed, AdamW at constant lr.
The compiled pieces of analysis.train.step are timed directly (after a warm-up call compiles them),
so the numbers are steady-state training, not compilation:

    plain   10 updates as one plain chunk (one dispatch)
    probed  1 probed update (every CHEAP_PROBES probe from the update's own forward/backward) + a
            plain chunk of 9: exactly what `train` runs with probe_every=10 (the headline)
    no_cka  the same with CHEAP_PROBES minus cka (what probe_every=10 costs when CKA is moved to
            `expensive_probes` at a slower cadence)
    every   10 probed updates (probe_every=1, CHEAP_PROBES), for scale

Each round times every variant once (order rotating), each call ending in block_until_ready; the
ratios are medians over rounds of per-round ratios (the machines are shared: interleaving cancels
most of the drift). Goal: probed/plain <= 1.05. The verdict is printed as measured.
Results go to benchmarks/results/training.json (git-ignored), written atomically, with the machine,
the library versions and the load average.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from analysis.execution import default_plan
from analysis.io import atomic_write, environment
from analysis.probe.probes import CHEAP_PROBES
from analysis.train.config import OptimConfig, TaskConfig, TrainConfig
from analysis.train.step import MAX_CHUNK, Runtime, program
from analysis.train.tasks import prepare
from models import ModelConfig

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "training.json"
GOAL = 1.05  # probing every 10 steps costs at most 5% over not probing
INTERVAL = 10

FULL = TrainConfig(
    model=ModelConfig(arch="decoder", placement="pre", layers=12, d_model=128, heads=4, d_ff=512, vocab=256),
    task=TaskConfig(name="markov", seq_len=64, batch_size=8),
    optim=OptimConfig(lr=3e-4),
    steps=1000,
    seeds=(0,),
    probe_every=INTERVAL,
    probes=CHEAP_PROBES,
)
# --smoke: the tests' tiny shapes (so the suite's compilation cache serves it); not a measurement.
SMOKE = TrainConfig(
    model=ModelConfig(arch="decoder", layers=2, d_model=16, heads=2, d_ff=32, vocab=32, max_len=32),
    task=TaskConfig(name="markov", seq_len=16, batch_size=4),
    steps=1000,
    seeds=(0, 1),
    probe_every=INTERVAL,
    probes=("act_grad_norm", "param_grad_norm"),
)


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def measure(cfg: TrainConfig, rounds: int) -> dict[str, Any]:
    """Median seconds per 10 updates of each variant, and the per-round ratios' medians."""
    assert MAX_CHUNK >= INTERVAL
    data = prepare(cfg.task, cfg.model)
    prog = program(cfg, data, default_plan())
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    seeds = jax.device_put(jnp.asarray(cfg.seeds, jnp.uint32), device)
    arrays, rt = jax.device_put(data.arrays, device), jax.device_put(Runtime.of(cfg), device)
    probed = prog.probed(cfg.probes)
    no_cka = prog.probed(tuple(p for p in cfg.probes if p != "cka"))
    init = prog.init(seeds)

    def plain(s, step):
        return prog.plain(s, seeds, step, INTERVAL, arrays, rt)

    def interval(fn):
        def run(s, step):
            s, metrics, result = fn(s, seeds, step, arrays, rt)
            s, more = prog.plain(s, seeds, step + 1, INTERVAL - 1, arrays, rt)
            return s, (metrics, result, more)

        return run

    def every(s, step):
        outs = []
        for i in range(INTERVAL):
            s, metrics, result = probed(s, seeds, step + i, arrays, rt)
            outs.append((metrics, result))
        return s, outs

    variants = {"plain": plain, "probed": interval(probed), "no_cka": interval(no_cka), "every": every}
    states = {name: init for name in variants}
    step = {name: 0 for name in variants}

    def call(name: str) -> float:
        start = time.perf_counter()
        s, out = variants[name](states[name], step[name])
        jax.block_until_ready((s, out))
        states[name] = s
        step[name] += INTERVAL
        return time.perf_counter() - start

    compile_seconds = {name: call(name) for name in variants}  # warm-up: compiles
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for r in range(rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            times[name].append(call(name))
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))
    tokens = cfg.task.batch_size * cfg.task.seq_len * len(cfg.seeds) * INTERVAL
    plain_s = statistics.median(times["plain"])
    return {
        "seconds_per_10_updates": {k: statistics.median(v) for k, v in times.items()},
        "first_call_seconds": compile_seconds,
        "probe_every_10_over_plain": ratio("probed", "plain"),
        "probe_every_10_no_cka_over_plain": ratio("no_cka", "plain"),
        "probe_every_step_over_plain": ratio("every", "plain"),
        "round_ratios_probe_every_10": sorted(x / y for x, y in zip(times["probed"], times["plain"])),
        "tokens_per_second_plain": tokens / plain_s,
        "tokens_per_second_probe_every_10": tokens / statistics.median(times["probed"]),
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 rounds: checks the benchmark runs")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 15; smoke 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    rounds = args.rounds or (2 if args.smoke else 15)
    load_before = _load_average()
    started = time.perf_counter()
    result = measure(cfg, rounds)
    ratio = result["probe_every_10_over_plain"]
    report = {
        "taken": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "smoke": args.smoke,
        "config": {
            "arch": cfg.model.arch,
            "placement": cfg.model.placement,
            "layers": cfg.model.layers,
            "d_model": cfg.model.d_model,
            "heads": cfg.model.heads,
            "d_ff": cfg.model.d_ff,
            "vocab": cfg.model.vocab,
            "task": cfg.task.name,
            "batch": cfg.task.batch_size,
            "seq_len": cfg.task.seq_len,
            "seeds": len(cfg.seeds),
            "probes": list(cfg.probes),
        },
        **result,
        "goal": GOAL,
        "pass": bool(ratio <= GOAL),
        "seconds": round(time.perf_counter() - started, 1),
        "load_average": {"before": load_before, "after": _load_average()},
        "environment": environment(),
    }
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    per10 = result["seconds_per_10_updates"]
    print(
        f"decoder {cfg.model.layers}L d={cfg.model.d_model}, batch {cfg.task.batch_size}x{cfg.task.seq_len}, "
        f"{rounds} rounds ({'smoke, not a measurement' if args.smoke else 'full'})"
    )
    print(
        f"  plain                  {1e3 * per10['plain'] / INTERVAL:8.2f} ms/update  "
        f"{result['tokens_per_second_plain']:10.0f} tokens/s"
    )
    print(
        f"  probe every 10 steps   {1e3 * per10['probed'] / INTERVAL:8.2f} ms/update  "
        f"{result['tokens_per_second_probe_every_10']:10.0f} tokens/s"
    )
    print(f"  ... without cka        {1e3 * per10['no_cka'] / INTERVAL:8.2f} ms/update")
    print(f"  probe every step       {1e3 * per10['every'] / INTERVAL:8.2f} ms/update")
    print(
        f"  probe every 10 / plain = {ratio:.3f} (goal <= {GOAL}): {'PASS' if ratio <= GOAL else 'MISS'}; "
        f"without cka {result['probe_every_10_no_cka_over_plain']:.3f}; "
        f"every step / plain = {result['probe_every_step_over_plain']:.3f}"
    )
    print(f"  load average {load_before} -> {report['load_average']['after']}; wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
