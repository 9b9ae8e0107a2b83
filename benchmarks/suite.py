"""lnscope's headline speed figures, each a ratio taken in one run (see benchmarks/README.md).

    python -m benchmarks --json benchmarks/results/latest.json     # the full run (minutes)
    python -m benchmarks --smoke --no-peer --json /tmp/smoke.json  # tiny sizes: every key, no measurement

Keys (GOALS below): torch_speedup_plain_d128, torch_speedup_probed_d128 (the peer's step time over
lnscope's, decoder d=128 at two depths, the smaller), probe_overhead (probed / plain step, the
larger), flop_floor_ratio (plain step time over its XLA-counted FLOPs at a large matmul's measured
rate, the larger), seed_sweep_vs_torch (the peer's init study of 32 seeds over lnscope's probe_at_init with its
defaults),
compile_ratio_192_over_6, deep1000_seconds (a 1000-layer init probe, end to end in a fresh process),
peak_rss_ratio (peak resident memory of the probed step's process over the plain one's); reported
beside them, sweep_speedup_plain_d128 / sweep_speedup_probed_d128 (a sweep's throughput: two runs at
once, per model-step, against the peer's better way to run two; bench_sweep_steps);
first_probe_seconds_18L_encdec (the first probe_at_init of an 18-layer encoder-decoder in a fresh
process, compile included, cold persistent cache; the warm cache's beside it; bench_first_probe),
report_cold_seconds (a fresh clone's `make report`, setup included: benchmarks/report_cold.sh, run
by hand, writes it to REPORT_COLD_JSON; read back here). A diagnostic,
"core_scaling", times both sides' steps on one core (bench_core_scaling). A key is
None when it could not be measured, with the reason under "reasons". Timings are medians after a
first (compile) and a second (warm-up) call, both reported apart; lnscope and the peer alternate
round by round so both see the same machine load.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import flax
import flax.nnx as nnx
import jax
import jax.numpy as jnp
import jaxlib
import optax

from analysis.allocator import active as allocator_active
from analysis.execution import default_plan
from analysis.io import atomic_write
from analysis.probe.api import _compiled, probe_at_init
from analysis.probe.loss import model_inputs, random_batch
from analysis.probe.probes import CHEAP_PROBES, ProbeConfig, probe_program
from benchmarks import peer
from benchmarks.steps import STEP_PROBES, StepPair, median_ms, timed
from models import ModelConfig, Transformer

ROOT = Path(__file__).resolve().parents[1]

# key -> (comparison, goal); None where the issue only asks to report the number.
GOALS: dict[str, tuple[str, float] | None] = {
    "torch_speedup_plain_d128": (">=", 1.0),
    "torch_speedup_probed_d128": (">=", 1.0),
    "probe_overhead": ("<=", 1.10),
    "flop_floor_ratio": ("<=", 2.0),
    "seed_sweep_vs_torch": (">=", 1.5),
    "compile_ratio_192_over_6": ("<=", 1.5),
    "deep1000_seconds": ("<", 60.0),
    "peak_rss_ratio": None,
    "sweep_speedup_plain_d128": None,
    "sweep_speedup_probed_d128": None,
    "first_probe_seconds_18L_encdec": ("<=", 3.0),
    "report_cold_seconds": ("<=", 180.0),
}
# What benchmarks/report_cold.sh writes: {"seconds": ..., "setup_s": ..., "report_s": ..., "commit": ...}
REPORT_COLD_JSON = ROOT / "benchmarks" / "results" / "report_cold.json"


@dataclasses.dataclass(frozen=True)
class Sizes:
    d_model: int = 128
    depths: tuple[int, ...] = (6, 18)
    batch: int = 8
    seq: int = 64
    rounds: int = 5  # lnscope / peer alternations
    calls: int = 10  # steps of each kind per round
    matmul_n: int = 2048
    seed_layers: int = 12
    seed_d: int = 64
    seeds: int = 32
    compile_depths: tuple[int, int] = (6, 192)
    compile_d: int = 64
    compile_repeats: int = 3
    deep_layers: int = 1000
    deep_d: int = 64
    deep_batch: int = 8
    deep_seq: int = 32
    extras: bool = True  # full-token CKA and bfloat16 steps beside the headline ones
    core_rounds: int = 3  # one-core diagnostic: fresh pinned processes per depth, alternating with the peer
    first_probe_layers: int = 18  # the encoder-decoder of first_probe_seconds_18L_encdec (ModelConfig's defaults)
    first_probe_d: int = 64


FULL = Sizes()
SMOKE = Sizes(
    d_model=16,
    depths=(2,),
    batch=2,
    seq=8,
    rounds=1,
    calls=2,
    matmul_n=128,
    seed_layers=2,
    seed_d=16,
    seeds=3,
    compile_depths=(2, 24),
    compile_d=16,
    compile_repeats=1,
    deep_layers=24,
    deep_d=16,
    deep_batch=2,
    deep_seq=8,
    extras=False,
    core_rounds=1,
    first_probe_layers=2,
    first_probe_d=16,
)

# Runs at once in the sweep benchmark: one per core of this 2-core machine.
SWEEP_STREAMS = 2

# A deep stack's init probe: CKA over 1000 layers is 10⁶ pairs; on 64 tokens each (Gram path) it
# stays a few GFLOP. Every other cheap probe is computed in full.
DEEP_PROBES = ProbeConfig(probes=CHEAP_PROBES, cka_tokens=64, cka_null="half")


def decoder_config(layers: int, d_model: int, **kw: Any) -> ModelConfig:
    """The benchmarks' model: decoder Pre-LN, 4 heads, FFN 4d, 256 tokens, positions up to 128."""
    return ModelConfig(
        arch="decoder",
        placement="pre",
        layers=layers,
        d_model=d_model,
        heads=4,
        d_ff=4 * d_model,
        vocab=256,
        max_len=128,
        **kw,
    )


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# CPU features that decide which matmul kernels XLA can use: the float32 rate (AVX2/FMA, AVX-512) and
# whether the plan's compute_dtype="bfloat16" is faster or slower than float32 (AMX, AVX512-BF16: in hardware).
MATMUL_CPU_FLAGS: tuple[str, ...] = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_matmul_flags(cpuinfo: str) -> list[str]:
    """The MATMUL_CPU_FLAGS that a /proc/cpuinfo text lists for its first processor."""
    flags = next((l.split(":", 1)[1].split() for l in cpuinfo.splitlines() if l.startswith("flags")), [])
    return [f for f in MATMUL_CPU_FLAGS if f in flags]


def machine_info() -> dict[str, Any]:
    cpu, flags = platform.processor() or platform.machine(), None
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        flags = cpu_matmul_flags(cpuinfo)
        cpu = next(l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu_model": cpu,
        "cpu_matmul_flags": flags,
        "nproc": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "mimalloc_preloaded": allocator_active(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---------------------------------------------------------------------------------------------
# Training steps against the peer: speedups, probe overhead, FLOP floor.
# ---------------------------------------------------------------------------------------------
def matmul_rate(n: int, repeats: int = 7, k: int | None = None, m: int | None = None) -> float:
    """FLOP/s of a jitted (m×k)·(k×n) float32 matmul, n×n·n×n by default (the machine's large-matmul
    rate under XLA): the best of `repeats` calls after a first."""
    k, m = k or n, m or n
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    timed(lambda: f(a, b))
    return 2 * m * k * n / min(timed(lambda: f(a, b)) for _ in range(repeats))


def bench_steps(sizes: Sizes, python: Path | None) -> dict[str, Any]:
    """Per depth: lnscope's plain and probed step (STEP_PROBES) and the peer's, in alternating rounds."""
    out: dict[str, Any] = {"probe_config": repr(STEP_PROBES)}
    rate = matmul_rate(sizes.matmul_n)
    out["matmul_gflops"] = rate / 1e9
    # Diagnostic, not a headline key: the rate of the step's own FFN product, (B·T × d)·(d × 4d). On
    # XLA's CPU runtime it is a single core's (too small to be split over threads), while the
    # floor's large matmul uses every core: the gap between the two rates is most of flop_floor_ratio.
    # A call's time includes its dispatch, so this understates the kernel's own rate (a trace of the
    # step shows the product alone).
    step_rate = matmul_rate(4 * sizes.d_model, repeats=31, k=sizes.d_model, m=sizes.batch * sizes.seq)
    out["step_matmul_gflops"] = step_rate / 1e9
    for depth in sizes.depths:
        cfg = decoder_config(depth, sizes.d_model)
        pair = StepPair(cfg, STEP_PROBES, sizes.batch, sizes.seq)
        times: dict[str, list[float]] = {"plain": [], "probed": []}
        peer_rounds: list[dict[str, float]] = []
        loads = [_load()]
        for _ in range(sizes.rounds):
            for name, ts in pair.round(sizes.calls).items():
                times[name] += ts
            if python is not None:
                peer_rounds.append(
                    peer.train_steps(
                        python,
                        layers=depth,
                        d_model=sizes.d_model,
                        batch=sizes.batch,
                        seq=sizes.seq,
                        steps=sizes.calls,
                        warmup=2,
                    )
                )
            loads.append(_load())
        flops = pair.flops("plain")
        row = {
            "plain_ms": median_ms(times["plain"]),
            "probed_ms": median_ms(times["probed"]),
            "first_call_s": pair.first_call_s,
            "warmup_call_s": pair.warmup_s,
            "samples": len(times["plain"]),
            "plain_gflop": None if flops is None else flops / 1e9,
            "load": loads,
        }
        row["probe_overhead"] = row["probed_ms"] / row["plain_ms"]
        if flops is not None:
            row["flop_floor_ms"] = 1e3 * flops / rate
            row["flop_floor_ratio"] = row["plain_ms"] / row["flop_floor_ms"]
            row["flop_floor_ratio_at_step_matmul_rate"] = row["plain_ms"] / (1e3 * flops / step_rate)
        if peer_rounds:
            row["torch_plain_ms"] = statistics.median(r["plain_ms"] for r in peer_rounds)
            row["torch_probed_ms"] = statistics.median(r["probed_ms"] for r in peer_rounds)
            row["torch_speedup_plain"] = row["torch_plain_ms"] / row["plain_ms"]
            row["torch_speedup_probed"] = row["torch_probed_ms"] / row["probed_ms"]
            row["torch"] = peer_rounds[0]["torch"]
            row["torch_rounds"] = peer_rounds
        out[str(depth)] = row
        del pair
    return out


def bench_step_variants(sizes: Sizes) -> dict[str, Any]:
    """Not headline keys: the probed step with full-token CKA, and the bfloat16 mixed-precision step,
    each against the headline step of the same depth, alternating call by call."""
    out: dict[str, Any] = {}
    for depth in sizes.depths:
        cfg = decoder_config(depth, sizes.d_model)
        full = StepPair(cfg, ProbeConfig(), sizes.batch, sizes.seq)
        base = StepPair(cfg, STEP_PROBES, sizes.batch, sizes.seq)
        mixed = StepPair(
            cfg, STEP_PROBES, sizes.batch, sizes.seq, plan=default_plan().replace(compute_dtype="bfloat16")
        )
        t: dict[str, list[float]] = {
            k: [] for k in ("plain", "probed_step", "probed_full", "plain_bf16", "probed_bf16")
        }
        for _ in range(sizes.rounds * sizes.calls):
            t["plain"].append(base.time("plain"))
            t["probed_full"].append(full.time("probed"))
            t["probed_step"].append(base.time("probed"))
            t["plain_bf16"].append(mixed.time("plain"))
            t["probed_bf16"].append(mixed.time("probed"))
        med = {k: median_ms(v) for k, v in t.items()}
        out[str(depth)] = {
            **{f"{k}_ms": v for k, v in med.items()},
            "probe_overhead_full_cka": med["probed_full"] / med["plain"],
            "bf16_over_f32_plain": med["plain_bf16"] / med["plain"],
            "bf16_over_f32_probed": med["probed_bf16"] / med["probed_step"],
            "load": _load(),
        }
        del full, base, mixed
    return out


def window_overlap(windows: list[list[float] | None]) -> float:
    """The share of the runs' timed windows ([start, end], wall clock) during which all of them ran:
    the common span over the mean window's length (1 = fully at once, 0 = one after the other);
    NaN when a run did not report its window."""
    if any(w is None for w in windows):
        return float("nan")
    common = min(end for _, end in windows) - max(start for start, _ in windows)
    return max(0.0, common) / statistics.mean(end - start for start, end in windows)


def sweep_row(
    times: dict[str, list[float]], peer_rounds: list[list[dict[str, Any]]], step_row: dict[str, Any]
) -> dict[str, Any]:
    """One depth's sweep figures from lnscope's per model-step times (s; "plain", "probed" with runs at
    once, "plain_one", "probed_one" alone), the peer's rounds of runs at once (each run's medians in
    ms) and bench_steps' row of that depth (the peer's two-thread times)."""
    row: dict[str, Any] = {f"{k}_ms": median_ms(v) for k, v in times.items()}
    for name in ("plain", "probed"):
        row[f"{name}_streams_gain"] = row[f"{name}_one_ms"] / row[f"{name}_ms"]
        if peer_rounds and f"torch_{name}_ms" in step_row:
            # per model-step of one-thread processes at once: the mean of their medians / their number
            at_once_ms = statistics.median(
                statistics.mean(r[f"{name}_ms"] for r in runs) / len(runs) for runs in peer_rounds
            )
            row[f"torch_{name}_at_once_ms"] = at_once_ms
            row["torch_at_once_overlap"] = min(
                window_overlap([r.get("timed_window_unix_s") for r in runs]) for runs in peer_rounds
            )
            row[f"torch_{name}_one_ms"] = step_row[f"torch_{name}_ms"]
            row[f"torch_{name}_best_ms"] = min(at_once_ms, step_row[f"torch_{name}_ms"])
            row[f"sweep_speedup_{name}"] = row[f"torch_{name}_best_ms"] / row[f"{name}_ms"]
    if peer_rounds:
        row["torch_rounds"] = peer_rounds
    return row


def bench_sweep_steps(sizes: Sizes, python: Path | None, steps: dict[str, Any] | None) -> dict[str, Any]:
    """Reported, not goals: a sweep's throughput. Per depth, two models' steps at once, one per
    core, as lnscope's training runs a run's seeds on a CPU (analysis/train/seeds.py; the `lnscope`
    command also runs a study's jobs one process per core), against the peer's better way to run
    two: one after the other on two threads each (bench_steps' torch times, this run) or two
    one-thread processes at once.
    Times are per model-step (a pair's wall time / 2); lnscope's one-stream step alternates with the
    pairs for the gain from the second stream."""
    out: dict[str, Any] = {"streams": SWEEP_STREAMS}
    pool = ThreadPoolExecutor(SWEEP_STREAMS, thread_name_prefix="bench-stream")
    try:
        for depth in sizes.depths:
            cfg = decoder_config(depth, sizes.d_model)
            first = StepPair(cfg, STEP_PROBES, sizes.batch, sizes.seq)
            first.compile()
            pairs = [first] + [first.twin() for _ in range(SWEEP_STREAMS - 1)]
            at_once = lambda name, pairs=pairs: timed(lambda: list(pool.map(lambda p: p.time(name), pairs)))
            at_once("plain"), at_once("probed")  # the first calls from the pool's threads
            times: dict[str, list[float]] = {k: [] for k in ("plain", "probed", "plain_one", "probed_one")}
            peer_rounds: list[list[dict[str, Any]]] = []
            for _ in range(sizes.rounds):
                for i in range(sizes.calls):
                    for name in ("plain", "probed") if i % 2 == 0 else ("probed", "plain"):
                        times[name].append(at_once(name) / SWEEP_STREAMS)
                        times[f"{name}_one"].append(pairs[0].time(name))
                if python is not None and "peer_reason" not in out:
                    try:
                        peer_rounds.append(
                            peer.train_steps_at_once(
                                python,
                                copies=SWEEP_STREAMS,
                                layers=depth,
                                d_model=sizes.d_model,
                                batch=sizes.batch,
                                seq=sizes.seq,
                                steps=sizes.calls,
                                warmup=2,
                            )
                        )
                    except (peer.PeerUnavailable, subprocess.SubprocessError, OSError) as error:
                        out["peer_reason"] = f"{type(error).__name__}: {error}"  # lnscope's side goes on
                        peer_rounds = []
            row = sweep_row(times, peer_rounds, (steps or {}).get(str(depth), {}))
            row["load"] = _load()
            out[str(depth)] = row
            del pairs
    finally:
        pool.shutdown()
    return out


# ---------------------------------------------------------------------------------------------
# Initialization study over seeds, against the peer's loop.
# ---------------------------------------------------------------------------------------------
def bench_seed_sweep(sizes: Sizes, python: Path | None) -> dict[str, Any]:
    cfg = decoder_config(sizes.seed_layers, sizes.seed_d)
    study = lambda: probe_at_init(cfg, seeds=range(sizes.seeds), batch_size=sizes.batch, seq_len=sizes.seq)
    _compiled.cache_clear()
    jax.clear_caches()
    cold = timed(study)  # compile + run + tidy rows, as a first study in a fresh process
    warm = [timed(study) for _ in range(3)]  # compiled: a second study of the same config
    out: dict[str, Any] = {"lnscope_cold_s": cold, "lnscope_warm_s": statistics.median(warm), "load": [_load()]}
    if python is not None:
        torch_runs = []
        for _ in range(2):  # alternating with lnscope's warm runs
            torch_runs.append(
                peer.seed_sweep(
                    python,
                    layers=sizes.seed_layers,
                    d_model=sizes.seed_d,
                    batch=sizes.batch,
                    seq=sizes.seq,
                    seeds=sizes.seeds,
                )["total_s"]
            )
            warm.append(timed(study))
        out["lnscope_warm_s"] = statistics.median(warm)
        out["torch_s"] = statistics.median(torch_runs)
        out["speedup_warm"] = out["torch_s"] / out["lnscope_warm_s"]
        out["speedup_cold"] = out["torch_s"] / cold
    out["load"].append(_load())
    _compiled.cache_clear()
    return out


# ---------------------------------------------------------------------------------------------
# Compile time against depth; a 1000-layer stack end to end; peak memory.
# ---------------------------------------------------------------------------------------------
def bench_compile(sizes: Sizes) -> dict[str, Any]:
    """`jit(probe_program).lower().compile()` (all cheap probes) at two depths, fresh caches, medians."""

    def setup(layers: int):
        cfg = decoder_config(layers, sizes.compile_d)
        graphdef, state = nnx.eval_shape(lambda: nnx.split(Transformer(cfg, nnx.Rngs(0), default_plan().model_ops())))
        batch = jax.eval_shape(lambda: random_batch(cfg, jax.random.key(0), 8, 64))
        abstract = lambda t: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)
        fns = {
            "probe_program": lambda s, b: probe_program(graphdef, s, b, cfg, ProbeConfig()),
            "forward": lambda s, b: nnx.merge(graphdef, s)(*model_inputs(cfg, b)),
        }
        return (abstract(state), abstract(batch)), fns

    setups = {d: setup(d) for d in sizes.compile_depths}
    kinds = ("probe_program", "forward") if sizes.extras else ("probe_program",)
    samples: dict[str, dict[int, list[float]]] = {k: {d: [] for d in sizes.compile_depths} for k in kinds}
    for r in range(sizes.compile_repeats):
        for kind in samples:
            for depth in sizes.compile_depths if r % 2 == 0 else sizes.compile_depths[::-1]:
                args, fns = setups[depth]
                jax.clear_caches()
                samples[kind][depth].append(timed(lambda: jax.jit(fns[kind]).lower(*args).compile() and 0))
    shallow, deep = sizes.compile_depths
    out = {}
    for kind, per in samples.items():
        med = {d: statistics.median(v) for d, v in per.items()}
        out[kind] = {"seconds": {str(d): v for d, v in med.items()}, "ratio": med[deep] / med[shallow]}
    jax.clear_caches()
    return out


_CHILD_ENV = {"JAX_ENABLE_COMPILATION_CACHE": "false", "PYTHONPATH": str(ROOT)}


def _children(
    codes: list[str], timeout: float, parallel: bool, cpus: set[int] | None = None
) -> list[tuple[float, dict[str, Any]]]:
    """Run each code in a fresh interpreter (this one's environment, mimalloc preload included;
    restricted to `cpus` if given); [(wall seconds, the JSON it printed last)]. `parallel` (smoke
    runs only: their timings are not measurements) starts them all at once."""

    def start(code: str):
        return time.perf_counter(), subprocess.Popen(
            peer.pinned([sys.executable, "-c", code], cpus),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **_CHILD_ENV},
        )

    def finish(started, proc) -> tuple[float, dict[str, Any]]:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()  # not left computing beside the benchmarks that follow
            proc.communicate()
            raise RuntimeError(f"a fresh process ran past {timeout:.0f} s and was killed") from None
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
        try:
            return wall, json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise RuntimeError(f"a fresh process printed no JSON result: {out.strip()[-200:]!r}") from None

    if parallel:
        running = [start(code) for code in codes]
        try:
            return [finish(*r) for r in running]
        finally:  # after a failure, none of the others is left computing
            for _, proc in running:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
    return [finish(*start(code)) for code in codes]


def _deep_code(sizes: Sizes) -> str:
    return f"""
import json, time
t0 = time.perf_counter()
from analysis.probe.api import probe_at_init
from benchmarks.suite import DEEP_PROBES, decoder_config
df = probe_at_init(decoder_config({sizes.deep_layers}, {sizes.deep_d}), seeds=[0], batch_size={sizes.deep_batch},
                   seq_len={sizes.deep_seq}, probe_config=DEEP_PROBES)
import numpy as np
finite = bool(np.isfinite(df["value"]).all())
print(json.dumps({{"rows": len(df), "finite": finite, "inner_s": time.perf_counter() - t0}}))
"""


def _rss_code(kind: str, layers: int, sizes: Sizes, pcfg: str) -> str:
    # VmHWM (the peak of this process's own address space) rather than ru_maxrss, which a child
    # inherits from its parent across fork + exec (every child would report the benchmark's own peak).
    return f"""
import json
import jax
from benchmarks.steps import make_train_steps, STEP_PROBES
from analysis.probe.loss import random_batch
from analysis.probe.probes import ProbeConfig
from benchmarks.suite import decoder_config
status = lambda key: next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith(key))
cfg = decoder_config({layers}, {sizes.d_model})
state, opt_state, plain, probed = make_train_steps(cfg, {pcfg})
batch = random_batch(cfg, jax.random.key(1), {sizes.batch}, {sizes.seq})
before = status("VmRSS:")
step = {kind}
for _ in range(5):
    out = step(state, opt_state, batch, jax.random.key(2))
    jax.block_until_ready(out)
    state, opt_state = out[:2]
print(json.dumps({{"maxrss_mib": status("VmHWM:"), "before_first_call_mib": before}}))
"""


def bench_fresh_processes(sizes: Sizes) -> dict[str, Any]:
    """Fresh processes: the deep stack's init probe end to end (deep1000_seconds), and the peak RSS
    of 5 plain steps against 5 probed steps (deepest step config; peak_rss_ratio)."""
    layers = max(sizes.depths)
    kinds = [("plain", "plain", "STEP_PROBES"), ("probed", "probed", "STEP_PROBES")]
    if sizes.extras:
        kinds.append(("probed_full_cka", "probed", "ProbeConfig()"))
    codes = [_deep_code(sizes)] + [_rss_code(kind, layers, sizes, pcfg) for _, kind, pcfg in kinds]
    (deep_wall, deep), *rss_runs = _children(codes, timeout=1800, parallel=not sizes.extras)
    runs = {name: got["maxrss_mib"] for (name, _, _), (_, got) in zip(kinds, rss_runs)}
    rss = {
        **{f"{k}_mib": v for k, v in runs.items()},
        "ratio": runs["probed"] / runs["plain"],
        "layers": layers,
        "before_first_call_mib": {
            name: got["before_first_call_mib"] for (name, _, _), (_, got) in zip(kinds, rss_runs)
        },
    }
    if "probed_full_cka" in runs:
        rss["ratio_full_cka"] = runs["probed_full_cka"] / runs["plain"]
    deep = {"seconds": deep_wall, **deep, "layers": sizes.deep_layers, "probe_config": repr(DEEP_PROBES)}
    return {"deep": deep, "rss": rss, "load": _load()}


def _first_probe_code(sizes: Sizes, cache_dir: str) -> str:
    # lnscope's programs keep every compiled program in the persistent cache (analysis.runtime); the
    # code configures the same, in a cache folder of this benchmark's own.
    return f"""
import json, os, time
t0 = time.perf_counter()
import jax
from analysis.runtime import configure_compilation_cache
os.environ["JAX_COMPILATION_CACHE_DIR"] = {cache_dir!r}
os.environ.pop("LNSCOPE_COMPILATION_CACHE", None)
jax.config.update("jax_enable_compilation_cache", True)
configure_compilation_cache()
from analysis.probe.api import probe_at_init
from models import ModelConfig
cfg = ModelConfig(arch="encdec", layers={sizes.first_probe_layers}, d_model={sizes.first_probe_d},
                  d_ff={4 * sizes.first_probe_d})
t1, c1 = time.perf_counter(), time.process_time()
df = probe_at_init(cfg)
t2, c2 = time.perf_counter(), time.process_time()
again = probe_at_init(cfg)
t3 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "first_probe_s": t2 - t1, "first_probe_cpu_s": c2 - c1,
                  "second_probe_s": t3 - t2, "rows": len(df),
                  "value_sum": float(df["value"].sum()), "same": bool(df.equals(again))}}))
"""


def bench_first_probe(sizes: Sizes) -> dict[str, Any]:
    """Time to a first result: `probe_at_init` of an encoder-decoder (ModelConfig's defaults, 18
    layers), its first call in a fresh process (compile included), with an empty persistent
    compilation cache (cold) and then with the cache that run filled (warm); the second call in
    the same process is the run alone. `first_probe_cpu_s`, the process' CPU time over the first
    call, tells a loaded machine's waiting apart. Both processes must find the same numbers."""
    with tempfile.TemporaryDirectory(prefix="lnscope-first-probe-") as cache_dir:
        code = _first_probe_code(sizes, cache_dir)
        (cold_wall, cold), (warm_wall, warm) = _children([code, code], timeout=1800, parallel=False)
    if cold["value_sum"] != warm["value_sum"] or not (cold["same"] and warm["same"]):
        raise RuntimeError("the cached programs gave other numbers than the compiled ones")
    return {
        "layers": sizes.first_probe_layers,
        "cold": {**cold, "process_s": cold_wall},
        "warm": {**warm, "process_s": warm_wall},
        "load": _load(),
    }


def read_report_cold(path: Path = REPORT_COLD_JSON) -> dict[str, Any]:
    """The last `benchmarks/report_cold.sh` result; a RuntimeError saying how to make it when absent."""
    if not path.is_file():
        raise RuntimeError(f"not measured by this run: run benchmarks/report_cold.sh (it writes {path.name})")
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------
# One core against two: what each side gains from the second core (a diagnostic, no goal).
# ---------------------------------------------------------------------------------------------
def _one_core_code(layers: int, sizes: Sizes, cache_dir: str) -> str:
    # The compilation cache (a temporary one, this diagnostic's own) spares the later rounds the
    # one-core compile: the first round times a freshly compiled program, the later ones the same
    # program read back (each round's first_call_s says which: a read-back takes well under a second).
    return f"""
import json, os
import jax
jax.config.update("jax_compilation_cache_dir", {cache_dir!r})
jax.config.update("jax_enable_compilation_cache", True)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
from benchmarks.steps import STEP_PROBES, StepPair, median_ms
from benchmarks.suite import decoder_config
with jax.numpy_dtype_promotion("standard"):
    pair = StepPair(decoder_config({layers}, {sizes.d_model}), STEP_PROBES, {sizes.batch}, {sizes.seq})
    times = pair.round({sizes.calls})
print(json.dumps({{"plain_ms": median_ms(times["plain"]), "probed_ms": median_ms(times["probed"]),
                  "first_call_s": pair.first_call_s, "cpus": sorted(os.sched_getaffinity(0))}}))
"""


def core_row(
    one_core: list[dict[str, Any]], peer_rounds: list[dict[str, Any]], step_row: dict[str, Any]
) -> dict[str, Any]:
    """One depth's one-core figures from lnscope's pinned rounds and the peer's one-thread pinned
    rounds (each a dict of medians in ms) and bench_steps' row of that depth (both sides on every
    core): each side's step on one core, its gain from the other cores (one-core time / all-cores
    time) and the peer's speed over lnscope's on one core."""
    row: dict[str, Any] = {"cpus": one_core[0]["cpus"], "rounds": one_core}
    for name in ("plain", "probed"):
        row[f"{name}_one_core_ms"] = statistics.median(r[f"{name}_ms"] for r in one_core)
        if f"{name}_ms" in step_row:
            row[f"{name}_core_gain"] = row[f"{name}_one_core_ms"] / step_row[f"{name}_ms"]
        if peer_rounds:
            row[f"torch_{name}_one_core_ms"] = statistics.median(r[f"{name}_ms"] for r in peer_rounds)
            row[f"torch_speedup_{name}_one_core"] = row[f"torch_{name}_one_core_ms"] / row[f"{name}_one_core_ms"]
            if f"torch_{name}_ms" in step_row:
                row[f"torch_{name}_core_gain"] = row[f"torch_{name}_one_core_ms"] / step_row[f"torch_{name}_ms"]
    if peer_rounds:
        row["torch_rounds"] = peer_rounds
    return row


def bench_core_scaling(sizes: Sizes, python: Path | None, steps: dict[str, Any] | None) -> dict[str, Any]:
    """A diagnostic beside torch_speedup_*: each side's step on one core, against bench_steps' times
    on every core of this run. lnscope runs in a fresh process restricted to one CPU (XLA sizes its
    thread pool from the CPUs it may use: one thread), the peer in one restricted to the same CPU with
    one thread; the two alternate round by round. It tells apart a side's speed per core from how
    much it gains from more cores. The every-core times were taken minutes earlier in the main
    process: a side's gain carries that drift, the ratio of the two sides' gains cancels it."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise RuntimeError(f"only CPU {cpus} is available: there is no second core to compare against")
    one = {cpus[0]}
    out: dict[str, Any] = {"cpu": cpus[0], "cores": len(cpus), "rounds": sizes.core_rounds}
    with tempfile.TemporaryDirectory(prefix="lnscope-one-core-") as cache:
        for depth in sizes.depths:
            lnscope_rounds: list[dict[str, Any]] = []
            peer_rounds: list[dict[str, Any]] = []
            for _ in range(sizes.core_rounds):
                lnscope_rounds.append(
                    _children([_one_core_code(depth, sizes, cache)], timeout=1800, parallel=False, cpus=one)[0][1]
                )
                if python is not None and "peer_reason" not in out:
                    try:
                        peer_rounds.append(
                            peer.train_steps(
                                python,
                                layers=depth,
                                d_model=sizes.d_model,
                                batch=sizes.batch,
                                seq=sizes.seq,
                                steps=sizes.calls,
                                warmup=2,
                                threads=1,
                                cpus=one,
                            )
                        )
                    except (peer.PeerUnavailable, subprocess.SubprocessError, OSError) as error:
                        out["peer_reason"] = f"{type(error).__name__}: {error}"  # lnscope's side goes on
                        peer_rounds = []
            out[str(depth)] = {
                **core_row(lnscope_rounds, peer_rounds, (steps or {}).get(str(depth), {})),
                "load": _load(),
            }
    return out


# ---------------------------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------------------------
def _attempt(name: str, fn: Callable[[], Any], reasons: dict[str, str]) -> Any:
    start = time.perf_counter()
    try:
        result = fn()
    except (peer.PeerUnavailable, RuntimeError, subprocess.SubprocessError, OSError) as error:
        reasons[name] = f"{type(error).__name__}: {error}"
        result = None
    print(f"  {name}: {time.perf_counter() - start:.0f} s (load {_load()})", flush=True)
    return result


def headline(results: dict[str, Any]) -> dict[str, float | None]:
    steps = results.get("steps")
    keys: dict[str, float | None] = dict.fromkeys(GOALS)
    if steps:
        rows = [v for k, v in steps.items() if k.isdigit()]
        if all("torch_speedup_plain" in r for r in rows):
            keys["torch_speedup_plain_d128"] = min(r["torch_speedup_plain"] for r in rows)
            keys["torch_speedup_probed_d128"] = min(r["torch_speedup_probed"] for r in rows)
        keys["probe_overhead"] = max(r["probe_overhead"] for r in rows)
        if all("flop_floor_ratio" in r for r in rows):
            keys["flop_floor_ratio"] = max(r["flop_floor_ratio"] for r in rows)
    sweep_steps = results.get("sweep_steps")
    if sweep_steps:
        rows = [v for k, v in sweep_steps.items() if k.isdigit()]
        for name in ("plain", "probed"):
            if rows and all(f"sweep_speedup_{name}" in r for r in rows):
                keys[f"sweep_speedup_{name}_d128"] = min(r[f"sweep_speedup_{name}"] for r in rows)
    sweep = results.get("seed_sweep")
    if sweep and "speedup_warm" in sweep:
        keys["seed_sweep_vs_torch"] = sweep["speedup_warm"]
    if results.get("compile"):
        keys["compile_ratio_192_over_6"] = results["compile"]["probe_program"]["ratio"]
    if results.get("deep"):
        keys["deep1000_seconds"] = results["deep"]["seconds"]
    if results.get("rss"):
        keys["peak_rss_ratio"] = results["rss"]["ratio"]
    if results.get("first_probe"):
        keys["first_probe_seconds_18L_encdec"] = results["first_probe"]["cold"]["first_probe_s"]
    if results.get("report_cold"):
        keys["report_cold_seconds"] = float(results["report_cold"]["seconds"])
    return keys


# Where a headline key's value comes from, in the order its reason for being None is looked up.
SOURCES: dict[str, tuple[str, ...]] = {
    "torch_speedup_plain_d128": ("peer",),
    "torch_speedup_probed_d128": ("peer",),
    "seed_sweep_vs_torch": ("peer",),
    "probe_overhead": ("steps",),
    "flop_floor_ratio": ("steps",),
    "compile_ratio_192_over_6": ("compile",),
    "deep1000_seconds": ("deep",),
    "peak_rss_ratio": ("rss",),
    "sweep_speedup_plain_d128": ("sweep_steps", "sweep_steps_peer", "peer", "steps"),
    "sweep_speedup_probed_d128": ("sweep_steps", "sweep_steps_peer", "peer", "steps"),
    "first_probe_seconds_18L_encdec": ("first_probe",),
    "report_cold_seconds": ("report_cold",),
}


def missing_reasons(keys: dict[str, float | None], reasons: dict[str, str]) -> None:
    """Give every None key without a reason of its own the reason of the first of its SOURCES that
    has one (a failed part, or the peer's absence)."""
    for key, value in keys.items():
        if value is None and key not in reasons:
            reasons[key] = next(
                (reasons[s] for s in SOURCES[key] if s in reasons), reasons.get("steps", "not measured")
            )


def verdict(key: str, value: float | None) -> str:
    goal = GOALS[key]
    if value is None:
        return "n/a"
    if goal is None:
        return "reported"
    op, target = goal
    ok = {">=": value >= target, "<=": value <= target, "<": value < target}[op]
    return "MET" if ok else "MISSED"


def table(results: dict[str, Any]) -> str:
    lines = [f"{'key':<28} {'value':>9}  {'goal':<8} verdict"]
    for key, value in results["headline"].items():
        goal = GOALS[key]
        shown = "None" if value is None else f"{value:9.3f}"
        lines.append(
            f"{key:<28} {shown:>9}  {'' if goal is None else f'{goal[0]} {goal[1]}':<8} "
            f"{verdict(key, value)}{'  (' + results['reasons'][key] + ')' if key in results['reasons'] else ''}"
        )
    steps = results.get("steps") or {}
    if "step_matmul_gflops" in steps:
        lines.append(
            f"  matmul rates: {results['sizes']['matmul_n']}³ {steps['matmul_gflops']:.0f} GFLOP/s (the FLOP floor's), "
            f"the step's FFN product {steps['step_matmul_gflops']:.0f} GFLOP/s"
        )
    for depth, r in steps.items():
        if not depth.isdigit():
            continue
        torch_part = (
            f"; torch {r['torch_plain_ms']:.1f} / {r['torch_probed_ms']:.1f} ms" if "torch_plain_ms" in r else ""
        )
        lines.append(
            f"  decoder {depth}L d{results['sizes']['d_model']}: plain {r['plain_ms']:.1f} ms, probed "
            f"{r['probed_ms']:.1f} ms (medians of {r['samples']}){torch_part}; first call (compile) "
            f"{r['first_call_s']['plain']:.1f} / {r['first_call_s']['probed']:.1f} s, warm-up "
            f"{1e3 * r['warmup_call_s']['plain']:.0f} / {1e3 * r['warmup_call_s']['probed']:.0f} ms"
        )
    for depth, r in (results.get("variants") or {}).items():
        lines.append(
            f"  variants {depth}L: probed full-token CKA {r['probed_full_ms']:.1f} ms "
            f"(overhead {r['probe_overhead_full_cka']:.2f}); bf16 plain {r['plain_bf16_ms']:.1f} ms "
            f"({r['bf16_over_f32_plain']:.2f}x f32), bf16 probed {r['probed_bf16_ms']:.1f} ms"
        )
    for depth, r in (results.get("sweep_steps") or {}).items():
        if not depth.isdigit():
            continue
        torch_part = (
            f"; torch best {r['torch_plain_best_ms']:.1f} / {r['torch_probed_best_ms']:.1f} ms (two threads, "
            f"one run: {r['torch_plain_one_ms']:.1f} / {r['torch_probed_one_ms']:.1f}; two one-thread runs "
            f"at once: {r['torch_plain_at_once_ms']:.1f} / {r['torch_probed_at_once_ms']:.1f}, their timed steps "
            f"{100 * r['torch_at_once_overlap']:.0f}% at once at least)"
            if "torch_plain_best_ms" in r
            else ""
        )
        lines.append(
            f"  sweep {depth}L, per model-step with {results['sweep_steps']['streams']} runs at once: plain "
            f"{r['plain_ms']:.1f} ms, probed {r['probed_ms']:.1f} ms (one run: {r['plain_one_ms']:.1f} / "
            f"{r['probed_one_ms']:.1f}){torch_part}"
        )
    for depth, r in (results.get("core_scaling") or {}).items():
        if not depth.isdigit():
            continue
        gains = lambda who: (
            f" (every core: {r[f'{who}plain_core_gain']:.2f}x / {r[f'{who}probed_core_gain']:.2f}x as fast)"
            if f"{who}plain_core_gain" in r and f"{who}probed_core_gain" in r
            else ""
        )
        torch_part = (
            f"; torch one thread {r['torch_plain_one_core_ms']:.1f} / {r['torch_probed_one_core_ms']:.1f} ms"
            f"{gains('torch_')}: torch/lnscope on one core {r['torch_speedup_plain_one_core']:.2f} / "
            f"{r['torch_speedup_probed_one_core']:.2f}"
            if "torch_plain_one_core_ms" in r
            else ""
        )
        lines.append(
            f"  one core {depth}L: lnscope plain {r['plain_one_core_ms']:.1f} / probed {r['probed_one_core_ms']:.1f} ms"
            f"{gains('')}{torch_part}"
        )
    first = results.get("first_probe")
    if first:
        lines.append(
            f"  first probe_at_init, {first['layers']}L encdec, fresh process: cold cache "
            f"{first['cold']['first_probe_s']:.2f} s, warm cache {first['warm']['first_probe_s']:.2f} s, "
            f"second call {first['cold']['second_probe_s']:.2f} s; imports {first['cold']['import_s']:.2f} s"
        )
    sweep = results.get("seed_sweep")
    if sweep:
        lines.append(
            f"  seed sweep: lnscope cold {sweep['lnscope_cold_s']:.2f} s (compile included), warm "
            f"{sweep['lnscope_warm_s']:.2f} s" + (f"; torch {sweep['torch_s']:.2f} s" if "torch_s" in sweep else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="write the results here (atomically)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: every key produced, nothing measured")
    parser.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer (its keys become None)")
    parser.add_argument("--no-peer-setup", action="store_true", help="use the peer venv only if it exists")
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    reasons: dict[str, str] = {}
    results: dict[str, Any] = {
        "smoke": args.smoke,
        "sizes": dataclasses.asdict(sizes),
        "machine": machine_info(),
        "load_start": _load(),
    }
    print(
        f"lnscope benchmarks{' (smoke)' if args.smoke else ''}: {results['machine']['cpu_model']} "
        f"({' '.join(results['machine']['cpu_matmul_flags'] or ['flags unknown'])}), "
        f"nproc {results['machine']['nproc']}, load {results['load_start']}, "
        f"mimalloc {results['machine']['mimalloc_preloaded']}",
        flush=True,
    )
    python = None
    if args.no_peer:
        reasons["peer"] = "skipped (--no-peer)"
    else:
        try:
            python = peer.ensure_venv(setup=not args.no_peer_setup)
        except (peer.PeerUnavailable, subprocess.SubprocessError, OSError) as error:
            reasons["peer"] = str(error)
    saved = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)  # real compiles only
    start = time.perf_counter()
    try:
        # optax's Adam mixes Python floats with int32 counts, which strict promotion rejects
        with jax.numpy_dtype_promotion("standard"):
            results["steps"] = _attempt("steps", lambda: bench_steps(sizes, python), reasons)
            results["sweep_steps"] = _attempt(
                "sweep_steps", lambda: bench_sweep_steps(sizes, python, results["steps"]), reasons
            )
            if results["sweep_steps"] and "peer_reason" in results["sweep_steps"]:
                reasons["sweep_steps_peer"] = results["sweep_steps"]["peer_reason"]
        results["core_scaling"] = _attempt(
            "core_scaling", lambda: bench_core_scaling(sizes, python, results["steps"]), reasons
        )
        if results["core_scaling"] and "peer_reason" in results["core_scaling"]:
            reasons["core_scaling_peer"] = results["core_scaling"]["peer_reason"]
        with jax.numpy_dtype_promotion("standard"):
            if sizes.extras:
                results["variants"] = _attempt("variants", lambda: bench_step_variants(sizes), reasons)
        results["seed_sweep"] = _attempt("seed_sweep", lambda: bench_seed_sweep(sizes, python), reasons)
        results["compile"] = _attempt("compile", lambda: bench_compile(sizes), reasons)
        fresh = _attempt("fresh_processes", lambda: bench_fresh_processes(sizes), reasons) or {}
        results["deep"], results["rss"] = fresh.get("deep"), fresh.get("rss")
        if not fresh:
            reasons["deep"] = reasons["rss"] = reasons["fresh_processes"]
        results["first_probe"] = _attempt("first_probe", lambda: bench_first_probe(sizes), reasons)
        results["report_cold"] = _attempt("report_cold", read_report_cold, reasons)
    finally:
        jax.config.update("jax_enable_compilation_cache", saved)
    results["wall_s"] = time.perf_counter() - start
    results["load_end"] = _load()
    results["headline"] = headline(results)
    missing_reasons(results["headline"], reasons)
    results["reasons"] = reasons
    results["verdicts"] = {k: verdict(k, v) for k, v in results["headline"].items()}
    atomic_write(args.json, lambda tmp: tmp.write_text(json.dumps(results, indent=2, default=str) + "\n"))
    print(table(results))
    print(f"load {results['load_start']} -> {results['load_end']}, {results['wall_s']:.0f} s; wrote {args.json}")
    return results
