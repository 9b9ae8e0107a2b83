"""Process-wide JAX settings of lnscope's programs: a persistent compilation cache, and releasing
compiled programs in long runs.

    lnscope ...                                   uses $JAX_COMPILATION_CACHE_DIR, else ~/.cache/lnscope/jax
                                                  (so do probe_at_init and probe_model in a script)
    LNSCOPE_COMPILATION_CACHE=off lnscope ...     no persistent cache
    LNSCOPE_WORKERS=3 lnscope check               worker processes for a study's jobs (lnscope: "auto")
    LNSCOPE_PIN_WORKERS=off lnscope check         workers not restricted to a share of the CPUs each
    LNSCOPE_STREAMS=1 python study.py             programs run at once on threads: probe_at_init's seed
                                                  groups, a training run's seeds (CPU: one per core)

Why a persistent cache by default: lnscope's studies are compile-bound on a CPU (a probe program or a
training step compiles for longer than it then runs), and a repeated compile read from the cache is
cheap. It also makes `release_compiled` cheap. Every program is cached, however quick its compile:
a study compiles many small programs, and together they are most of its time. How a model runs
(layer loop, compute dtype, seeds) is an execution plan's (analysis.execution).

JAX is imported inside the functions that use it: `lnscope` imports this module before it
re-executes itself (analysis.allocator), so a re-exec or a bad setting costs no JAX import.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CACHE_VAR = "LNSCOPE_COMPILATION_CACHE"  # "off" disables the persistent cache
WORKERS_VAR = "LNSCOPE_WORKERS"  # processes that compute a study's jobs: a whole number, or "auto"
MAX_AUTO_WORKERS = 8  # each worker is a JAX process of ~1-2 GB with its own XLA thread pool
STREAMS_VAR = "LNSCOPE_STREAMS"  # programs run at once on threads (probe_at_init's seed groups, training's seeds)
PIN_VAR = "LNSCOPE_PIN_WORKERS"  # "on" (default) or "off": each worker process restricted to its share of the CPUs
MAX_AUTO_STREAMS = 8


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/lnscope/jax (~/.cache/lnscope/jax)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lnscope" / "jax"


def configure_compilation_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache for this process, unless opted out.

    Honors an explicit JAX_COMPILATION_CACHE_DIR (what the Makefile sets); else uses
    `default_cache_dir()`. Returns the folder, or None when `LNSCOPE_COMPILATION_CACHE=off`.
    """
    choice = os.environ.get(CACHE_VAR, "")
    if choice not in ("", "on", "off"):
        raise ValueError(f"{CACHE_VAR}={choice!r}; valid choices: on (default), off")
    if choice == "off":
        return None
    import jax

    folder = Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_cache_dir())
    jax.config.update("jax_compilation_cache_dir", str(folder))
    # every program, however small (JAX's defaults skip quick compiles): small ones add up in a study
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def ensure_compilation_cache() -> Path | None:
    """The persistent compilation cache, on by default for lnscope's Python API too
    (`probe_at_init`, `probe_model` call this first): `configure_compilation_cache()` unless this
    process already chose (a cache folder set through JAX_COMPILATION_CACHE_DIR or jax.config, JAX's
    cache turned off) or `LNSCOPE_COMPILATION_CACHE=off`. Returns the folder in use, or None.

    Why: a script's or notebook's first study is compile-bound like the command's, and reading a
    program back is cheap; the program read back is the one compiled before, so no number changes.
    """
    import jax

    if not jax.config.jax_enable_compilation_cache:
        return None
    chosen = jax.config.jax_compilation_cache_dir
    if chosen:
        return Path(chosen)
    return configure_compilation_cache()


def release_compiled() -> None:
    """Drop every compiled XLA program of this process (reloaded from the persistent cache when needed
    again, instead of a compile).

    Why: on CPU each compiled program holds hundreds of memory mappings, and the kernel's default
    limit is 65530 per process (vm.max_map_count); a full report or `lnscope check` compiles well
    over a hundred programs, and past the limit LLVM fails with "Cannot allocate memory" and the
    process crashes.
    """
    import jax

    jax.clear_caches()


def memory_mappings() -> tuple[int, int] | None:
    """(memory mappings of this process, the kernel's per-process limit), or None where unknown."""
    try:
        used = sum(1 for _ in open("/proc/self/maps", "rb"))
        limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return None
    return used, limit


def release_compiled_if_crowded(fraction: float = 0.5) -> bool:
    """`release_compiled()` when this process uses more than `fraction` of its memory-mapping limit;
    returns whether it did. Cheap to call after every job: compiled programs stay in memory (and
    shared training programs stay compiled) until the limit comes near."""
    counts = memory_mappings()
    if counts is None or counts[0] <= fraction * counts[1]:
        return False
    release_compiled()
    return True


def default_workers() -> int:
    """Worker processes for a study's jobs (analysis.experiments.runs.compute_jobs), from $LNSCOPE_WORKERS:

    - unset or "1": none, every job computes in this process (the default in Python: a script or
      notebook needs no `if __name__ == "__main__":` guard);
    - a whole number N: N spawned processes;
    - "auto" (what the `lnscope` command and `make report` set): one per available core, at most
      MAX_AUTO_WORKERS, when JAX runs on the CPU (a study there is compile-bound, and XLA compiles a
      program on one core); 1 on an accelerator (one process owns its memory).
    """
    text = os.environ.get(WORKERS_VAR, "").strip() or "1"
    if text == "auto":
        return _per_core_on_cpu(MAX_AUTO_WORKERS)
    return _whole_number(WORKERS_VAR, text, "a whole number >= 1 (1 = compute in this process) or auto")


def _whole_number(var: str, text: str, valid: str) -> int:
    """int(text) of the environment variable `var`, or a ValueError naming the value and `valid`."""
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{var}={text!r}; valid values: {valid}")
    return int(text)


def _per_core_on_cpu(cap: int) -> int:
    """One per available core (at most `cap`) when JAX runs on the CPU, else 1."""
    import jax

    return 1 if jax.default_backend() != "cpu" else max(1, min(available_cores(), cap))


def worker_cpus(workers: int) -> list[list[int]] | None:
    """The CPUs each of `workers` job processes is restricted to: the available CPUs split into
    contiguous shares of near-equal size (larger ones first), or None (no restriction) when
    $LNSCOPE_PIN_WORKERS is "off", JAX runs on an accelerator, or there are fewer CPUs than workers.

    Why: XLA sizes a process's thread pool from the CPUs it may use, so unrestricted workers each run
    a pool over every core and contend for them (benchmarks/README.md measures it).
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin_workers() or workers < 1 or len(cpus) < workers or not _on_cpu_if_known():
        return None
    size, extra = divmod(len(cpus), workers)
    shares, start = [], 0
    for i in range(workers):
        end = start + size + (1 if i < extra else 0)
        shares.append(cpus[start:end])
        start = end
    return shares


def pin_workers() -> bool:
    """$LNSCOPE_PIN_WORKERS: "on" (default) or "off"; any other value is a ValueError naming it."""
    text = os.environ.get(PIN_VAR, "").strip() or "on"
    if text not in ("on", "off"):
        raise ValueError(f"{PIN_VAR}={text!r}; valid values: on, off")
    return text == "on"


def _on_cpu_if_known() -> bool:
    """False when this process already runs JAX on an accelerator; True otherwise. It does not start
    a backend to find out: on a GPU that would claim the device's memory before the workers start."""
    import jax
    from jax._src import xla_bridge

    return not xla_bridge.backends_are_initialized() or jax.default_backend() == "cpu"


def check_environment() -> None:
    """Every lnscope environment setting read (workers, streams, worker restriction), so that a bad
    value is a ValueError naming it and its valid values before any compute."""
    default_workers()
    default_streams()
    pin_workers()


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_streams() -> int:
    """How many programs run at once, each on its own thread (`probe_at_init`'s seed groups, a
    training run's per-seed programs): $LNSCOPE_STREAMS if set, else one per available core (at most
    MAX_AUTO_STREAMS) when JAX runs on the CPU, and 1 on an accelerator (one device runs one program
    at a time; vmapping the seeds fills it).

    Why on a CPU: XLA's kernels keep two cores poorly busy on the small matrices of an init study,
    while two programs at once fill them (benchmarks/README.md). A worker process of `compute_jobs`
    gets its share of the cores (cores // workers), so a pool does not oversubscribe them. An
    execution plan's `streams` (analysis.execution) overrides this default.
    """
    text = os.environ.get(STREAMS_VAR, "").strip()
    return _whole_number(STREAMS_VAR, text, "a whole number >= 1") if text else _per_core_on_cpu(MAX_AUTO_STREAMS)


PARENT_POLL_S = 1.0  # how often a worker looks whether its parent is still there (where prctl is missing)


def end_with_parent() -> None:
    """Make this worker process end when the process that started it does, however that one ends
    (SIGKILL, SIGTERM, a crash): call first in a pool's worker initializer.

    Why: a worker outliving its parent keeps its memory (a JAX process of a GB or more) and blocks
    writing results to a pipe nobody reads, under PID 1, for as long as it runs. On Linux the kernel
    sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); everywhere a daemon thread also
    watches the parent's pid and exits the process when it changes (the kernel's signal follows the
    thread that started the worker, the watch the whole parent process).
    """
    parent = multiprocessing.parent_process()
    parent_pid = parent.pid if parent is not None else os.getppid()
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was asked for
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="lnscope-parent-watch", daemon=True).start()


def run_on_threads(
    fn: Callable, calls: Sequence[tuple], streams: int, post: Callable[[Any], Any] | None = None
) -> list:
    """[post(fn(*args)) for args in calls], up to `streams` calls at once, each on its own thread.

    `fn` is a jitted function and every call has the same shapes (one program). Why threads: XLA's
    CPU kernels keep the cores poorly busy on lnscope's small matrices, and several programs at once
    fill them; a compiled program runs outside Python's lock, and calls from one thread execute one
    after another, so each stream needs a thread of its own. The program is traced and compiled
    here, in the caller's thread (JAX caches it after the first time): JAX's configuration
    contexts (`jax.enable_x64`, dtype promotion, matmul precision) are thread-local, so a trace on a
    worker thread would not see the caller's. Every call runs the same executable whatever
    `streams` is, so the results do not depend on it, bit for bit.
    """
    import jax
    import jax.numpy as jnp

    post = post or (lambda out: out)
    # Python scalars become arrays here, under the caller's contexts (under jax.enable_x64 a Python
    # int is int64; converted on a worker thread it would be int32 and not fit the compiled program),
    # and on every path alike, so one stream and several run the same program.
    as_array = lambda leaf: jnp.asarray(leaf) if isinstance(leaf, (bool, int, float)) else leaf
    calls = [tuple(jax.tree.map(as_array, args)) for args in calls]
    if streams <= 1 or len(calls) == 1:
        return [post(fn(*args)) for args in calls]
    compiled = fn.lower(*calls[0]).compile()
    with ThreadPoolExecutor(min(streams, len(calls)), thread_name_prefix="lnscope-stream") as pool:
        return list(pool.map(lambda args: post(compiled(*args)), calls))
