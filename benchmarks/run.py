"""lnscope benchmarks: three speed ratios, each against its goal.

    python -m benchmarks.run [--quick] [--out benchmarks/results/latest.json]

1. probe_overhead     probed train step / plain train step          goal <= 1.10
   A train step is one optax.adam update of the model parameters on analysis.probe.loss's loss, jitted, with
   the model and optimizer state as input and output. The probed step is the same update plus every
   CHEAP_PROBES output of analysis.probe.probes.probe_program, computed in the same jitted function and
   returned from it (so XLA cannot drop them). Decoder Pre-LN 12L (headline) and encdec 6L-6L.
2. compile_depth      compile time at depth 192 / at depth 6         goal <= 1.5
   `jax.jit(f).lower(...).compile()` of the probe program (headline) and of the plain forward,
   decoder, median of fresh compiles (persistent cache off, jax.clear_caches() before each).
3. seed_vmap_speedup  32 single-seed calls / one 32-seed vmapped call goal >= 5
   probe_at_init's compiled function (analysis.probe.api._compiled): one call on 32 seeds against a Python
   loop of 32 calls of the same function compiled for one seed; steady state (headline) and
   including compilation.

Times are medians of repeated runs after a warm-up call, each ending in block_until_ready, and are
reported as ratios: the machines are shared and noisy, so absolute times move between runs while
ratios taken in interleaved rounds move much less. PASS/MISS is printed as measured.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import flax
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import jaxlib
import optax

from analysis.probe.api import _compiled
from analysis.probe.loss import loss_from_logits, model_inputs, random_batch
from analysis.probe.probes import CHEAP_PROBES, ProbeConfig, probe_program, probe_program_with_grads
from models import ModelConfig, Transformer, build_model

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"

# name -> (comparison, goal); the ratio each benchmark reports is compared with its goal.
GOALS: dict[str, tuple[str, float]] = {
    "probe_overhead": ("<=", 1.10),
    "compile_depth": ("<=", 1.5),
    "seed_vmap_speedup": (">=", 5.0),
}

# The configurations the benchmarks were asked for.
BASE = dict(placement="pre", d_model=64, heads=4, d_ff=256)
BATCH, SEQ = 8, 64
TRAIN_CONFIGS = {
    "decoder_12L": ModelConfig(arch="decoder", layers=12, **BASE),
    "encdec_6L_6L": ModelConfig(arch="encdec", layers=6, **BASE),
}
COMPILE_DEPTHS = (6, 192)
N_SEEDS = 32
LEARNING_RATE = 1e-3


def _passes(name: str, ratio: float) -> bool:
    op, goal = GOALS[name]
    return bool(ratio <= goal) if op == "<=" else bool(ratio >= goal)


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were taken on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gib": ram_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": _load_average(),
    }


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# 1. Probed train step over plain train step.
# ---------------------------------------------------------------------------------------------
def make_train_steps(cfg: ModelConfig, pcfg: ProbeConfig):
    """(state, opt_state, plain_step, probed_step) for the model of `cfg` at seed 0.

    Both steps are jitted, donate their state, and map (state, opt_state, batch, key) to
    (state, opt_state, loss) -- plus the probe results for the probed step."""
    graphdef, state = nnx.split(build_model(cfg, seed=0))
    opt = optax.adam(LEARNING_RATE)
    opt_state = opt.init(state)

    def loss_fn(state, batch):
        logits = nnx.merge(graphdef, state)(*model_inputs(cfg, batch))
        return loss_from_logits(cfg, logits, batch)

    def apply(state, opt_state, grads):
        updates, opt_state = opt.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state

    def plain(state, opt_state, batch, key):
        del key
        loss, grads = jax.value_and_grad(loss_fn)(state, batch)
        state, opt_state = apply(state, opt_state, grads)
        return state, opt_state, loss

    # One forward + backward: the probe program's own parameter gradients drive the update.
    def probed(state, opt_state, batch, key):
        result, grads = probe_program_with_grads(graphdef, state, batch, cfg, pcfg, key)
        state, opt_state = apply(state, opt_state, grads)
        return state, opt_state, result["loss"], result

    donate = dict(donate_argnums=(0, 1))
    return state, opt_state, jax.jit(plain, **donate), jax.jit(probed, **donate)


def bench_probe_overhead(cfg: ModelConfig, rounds: int, calls: int) -> dict[str, Any]:
    """Median per-call times of both steps, alternating (each step chained on its own state)."""
    pcfg = ProbeConfig(probes=CHEAP_PROBES)
    state, opt_state, plain, probed = make_train_steps(cfg, pcfg)
    batch = random_batch(cfg, jax.random.key(1), BATCH, SEQ)
    key = jax.random.key(2)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)
    carry = {"plain": (copy(state), copy(opt_state)), "probed": (copy(state), copy(opt_state))}
    steps = {"plain": plain, "probed": probed}

    def call(name):
        out = steps[name](*carry[name], batch, key)
        carry[name] = out[:2]
        return out

    compile_s = {name: _timed(lambda n=name: call(n)) for name in steps}  # warm-up (includes compile)
    for name in steps:
        _timed(lambda n=name: call(n))
    # The two steps alternate call by call (the order flipping every call), so that both see the
    # same machine load; each round of `calls` pairs also gives its own ratio, to show the noise.
    times: dict[str, list[float]] = {name: [] for name in steps}
    round_ratios = []
    for r in range(rounds):
        this: dict[str, list[float]] = {name: [] for name in steps}
        for i in range(calls):
            for name in ("plain", "probed") if i % 2 == 0 else ("probed", "plain"):
                this[name].append(_timed(lambda n=name: call(n)))
        for name in steps:
            times[name].extend(this[name])
        round_ratios.append(_median(this["probed"]) / _median(this["plain"]))
    med = {name: _median(ts) for name, ts in times.items()}
    return {
        "ratio": med["probed"] / med["plain"],
        "plain_ms": 1e3 * med["plain"],
        "probed_ms": 1e3 * med["probed"],
        "first_call_s": compile_s,
        "samples": len(times["plain"]),
        "round_ratio_range": [min(round_ratios), max(round_ratios)],
        "method": "probe_program_with_grads: one forward+backward, its ∂ℒ/∂θ drives the update",
        "config": {"arch": cfg.arch, "layers": [s.layers for s in cfg.stacks()], "batch": BATCH, "seq": SEQ},
    }


# ---------------------------------------------------------------------------------------------
# 2. Compile time against depth.
# ---------------------------------------------------------------------------------------------
def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _compile_fns(layers: int):
    """(abstract args, {"probe_program": f, "forward": f}) for a decoder of `layers` layers."""
    cfg = ModelConfig(arch="decoder", layers=layers, **BASE)
    graphdef, state = nnx.eval_shape(lambda: nnx.split(Transformer(cfg, nnx.Rngs(0))))
    batch = jax.eval_shape(lambda: random_batch(cfg, jax.random.key(0), BATCH, SEQ))
    pcfg = ProbeConfig(probes=CHEAP_PROBES)
    fns = {
        "probe_program": lambda s, b: probe_program(graphdef, s, b, cfg, pcfg),
        "forward": lambda s, b: nnx.merge(graphdef, s)(*model_inputs(cfg, b)),
    }
    return (_abstract(state), _abstract(batch)), fns


def bench_compile_depth(repeats: int) -> dict[str, Any]:
    setups = {depth: _compile_fns(depth) for depth in COMPILE_DEPTHS}

    def one(depth: int, kind: str) -> tuple[float, float]:
        args, fns = setups[depth]
        jax.clear_caches()
        start = time.perf_counter()
        lowered = jax.jit(fns[kind]).lower(*args)
        mid = time.perf_counter()
        lowered.compile()
        return mid - start, time.perf_counter() - mid

    # No warm-up compile: the process has already compiled the train steps of benchmark 1.
    samples: dict[str, dict[int, list[tuple[float, float]]]] = {
        kind: {d: [] for d in COMPILE_DEPTHS} for kind in ("probe_program", "forward")
    }
    for r in range(repeats):
        for kind in samples:
            depths = COMPILE_DEPTHS if r % 2 == 0 else COMPILE_DEPTHS[::-1]
            for depth in depths:
                samples[kind][depth].append(one(depth, kind))
    out: dict[str, Any] = {}
    for kind, per_depth in samples.items():
        total = {d: _median([lo + co for lo, co in xs]) for d, xs in per_depth.items()}
        lower = {d: _median([lo for lo, _ in xs]) for d, xs in per_depth.items()}
        comp = {d: _median([co for _, co in xs]) for d, xs in per_depth.items()}
        shallow, deep = COMPILE_DEPTHS
        out[kind] = {
            "ratio": total[deep] / total[shallow],
            "total_s": {str(d): v for d, v in total.items()},
            "lower_s": {str(d): v for d, v in lower.items()},
            "compile_s": {str(d): v for d, v in comp.items()},
            "repeats": repeats,
        }
    jax.clear_caches()
    return out


# ---------------------------------------------------------------------------------------------
# 3. Seeds: one vmapped call against a loop of single-seed calls.
# ---------------------------------------------------------------------------------------------
def bench_seed_vmap(steady_repeats: int, compile_repeats: int) -> dict[str, Any]:
    cfg = TRAIN_CONFIGS["decoder_12L"]
    pcfg = ProbeConfig(probes=CHEAP_PROBES)
    seeds_all = jnp.arange(N_SEEDS, dtype=jnp.uint32)
    seeds_one = [jnp.asarray([s], jnp.uint32) for s in range(N_SEEDS)]  # on device before timing

    def fresh():
        _compiled.cache_clear()
        jax.clear_caches()
        return _compiled(cfg, pcfg, BATCH, SEQ, False, None)

    run = {"vmap": lambda fn: fn(seeds_all, None), "loop": lambda fn: [fn(s, None) for s in seeds_one]}

    # Including compilation: a fresh function (caches cleared), first call(s) timed end to end.
    with_compile: dict[str, list[float]] = {"vmap": [], "loop": []}
    kept: dict[str, Any] = {}
    for r in range(compile_repeats):
        for name in (("vmap", "loop") if r % 2 == 0 else ("loop", "vmap")):
            kept[name] = fn = fresh()
            with_compile[name].append(_timed(lambda: run[name](fn)))

    # Steady state: each variant calls the function it compiled above (same code, compiled for
    # 32 seeds or for one); one more warm-up call each, then interleaved repeats.
    steady: dict[str, list[float]] = {"vmap": [], "loop": []}
    for name in steady:
        _timed(lambda: run[name](kept[name]))
    for r in range(steady_repeats):
        for name in (("vmap", "loop") if r % 2 == 0 else ("loop", "vmap")):
            steady[name].append(_timed(lambda: run[name](kept[name])))
    _compiled.cache_clear()
    jax.clear_caches()
    med = {name: _median(ts) for name, ts in steady.items()}
    med_c = {name: _median(ts) for name, ts in with_compile.items()}
    return {
        "ratio": med["loop"] / med["vmap"],
        "ratio_with_compile": med_c["loop"] / med_c["vmap"],
        "vmap_s": med["vmap"],
        "loop_s": med["loop"],
        "vmap_with_compile_s": med_c["vmap"],
        "loop_with_compile_s": med_c["loop"],
        "steady_repeats": steady_repeats,
        "compile_repeats": compile_repeats,
        "config": {"arch": cfg.arch, "layers": cfg.layers, "batch": BATCH, "seq": SEQ, "seeds": N_SEEDS},
    }


# ---------------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------------
def _write_json(path: Path, payload: dict) -> None:
    """Atomically: a temp file in the same folder, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _line(label: str, name: str, ratio: float, detail: str) -> str:
    op, goal = GOALS[name]
    verdict = "PASS" if _passes(name, ratio) else "MISS"
    return f"{label:<44} {ratio:8.3f}   goal {op} {goal:<5}  {verdict}   {detail}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few repeats: a smoke run, not a measurement")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results JSON (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    if args.quick:
        train = dict(rounds=2, calls=3)
        compile_repeats, steady_repeats, seed_compile_repeats = 1, 1, 1
    else:
        train = dict(rounds=10, calls=10)
        compile_repeats, steady_repeats, seed_compile_repeats = 3, 7, 3

    # Compile times must be real compiles: no persistent cache (tests/conftest.py turns one on).
    saved = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        info = machine_info()
        print(f"lnscope benchmarks{' (quick)' if args.quick else ''}: {info['cpu_model']}, nproc {info['nproc']}, "
              f"load {info['load_average_start']}, jax {info['jax']}", flush=True)
        t0 = time.perf_counter()
        # optax's Adam mixes Python floats with int32 step counts, which strict promotion (the test
        # suite's setting) rejects; the train steps are traced under the standard rules.
        with jax.numpy_dtype_promotion("standard"):
            overhead = {name: bench_probe_overhead(cfg, **train) for name, cfg in TRAIN_CONFIGS.items()}
        print(f"  probe overhead done ({time.perf_counter() - t0:.0f} s)", flush=True)
        compile_depth = bench_compile_depth(compile_repeats)
        print(f"  compile depth done ({time.perf_counter() - t0:.0f} s)", flush=True)
        seeds = bench_seed_vmap(steady_repeats, seed_compile_repeats)
        print(f"  seed vmap done ({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        jax.config.update("jax_enable_compilation_cache", saved)
    info["load_average_end"] = _load_average()
    info["wall_s"] = round(time.perf_counter() - t0, 1)

    ratios = {
        "probe_overhead": overhead["decoder_12L"]["ratio"],
        "compile_depth": compile_depth["probe_program"]["ratio"],
        "seed_vmap_speedup": seeds["ratio"],
    }
    results = {
        "ratios": ratios,
        "goals": {name: f"{op} {goal}" for name, (op, goal) in GOALS.items()},
        "pass": {name: _passes(name, r) for name, r in ratios.items()},
        "quick": args.quick,
        "machine": info,
        "probe_overhead": overhead,
        "compile_depth": compile_depth,
        "seed_vmap_speedup": seeds,
    }
    _write_json(args.out, results)

    d, e = overhead["decoder_12L"], overhead["encdec_6L_6L"]
    pp, fw = compile_depth["probe_program"], compile_depth["forward"]
    lines = [
        _line("probed/plain train step, decoder 12L", "probe_overhead", d["ratio"],
              f"{d['probed_ms']:.1f} / {d['plain_ms']:.1f} ms"),
        _line("probed/plain train step, encdec 6L-6L", "probe_overhead", e["ratio"],
              f"{e['probed_ms']:.1f} / {e['plain_ms']:.1f} ms"),
        _line("compile depth 192/6, probe program", "compile_depth", pp["ratio"],
              f"{pp['total_s']['192']:.2f} / {pp['total_s']['6']:.2f} s"),
        _line("compile depth 192/6, forward", "compile_depth", fw["ratio"],
              f"{fw['total_s']['192']:.2f} / {fw['total_s']['6']:.2f} s"),
        _line("32 seeds: loop/vmap, steady", "seed_vmap_speedup", seeds["ratio"],
              f"{seeds['loop_s']:.2f} / {seeds['vmap_s']:.2f} s"),
        _line("32 seeds: loop/vmap, with compile", "seed_vmap_speedup", seeds["ratio_with_compile"],
              f"{seeds['loop_with_compile_s']:.2f} / {seeds['vmap_with_compile_s']:.2f} s"),
    ]
    print("\n".join(lines))
    print(f"load average {info['load_average_start']} -> {info['load_average_end']}; wrote {args.out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
