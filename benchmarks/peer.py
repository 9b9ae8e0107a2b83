"""The PyTorch peer: its virtual environment and its runs, as subprocesses of the benchmark.

The peer (benchmarks/peer/torch_probe_bench.py: a Transformer trained with ordinary hooks, every
probe every step; torch_seed_sweep.py: the same model's initialization study, a loop over seeds) is
what a researcher would write instead of lnscope. It runs in its own venv made by
benchmarks/peer/setup.sh (CPU torch for CPython 3.11; torch is never a dependency of lnscope). When
that venv cannot be made, every peer number is None with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PEER_DIR = Path(__file__).resolve().parent / "peer"
VENV = Path(os.environ.get("TORCHPEER_VENV", "/tmp/torchpeer"))


class PeerUnavailable(RuntimeError):
    """The peer's venv is missing and could not be made; the message is the reason."""


def ensure_venv(setup: bool) -> Path:
    """The peer venv's python; with `setup`, run setup.sh first (idempotent; slow only the first time)."""
    python = VENV / "bin" / "python"
    if setup:
        done = subprocess.run(
            ["bash", str(PEER_DIR / "setup.sh")],
            capture_output=True,
            text=True,
            env={**os.environ, "TORCHPEER_VENV": str(VENV)},
            timeout=1800,
        )
        if done.returncode != 0:
            raise PeerUnavailable(f"setup.sh failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    if not python.exists():
        raise PeerUnavailable(f"no peer venv at {VENV} (run benchmarks/peer/setup.sh, or drop --no-peer-setup)")
    check = subprocess.run(
        [str(python), "-c", "import torch; assert '+cpu' in torch.__version__"], capture_output=True, timeout=120
    )
    if check.returncode != 0:
        raise PeerUnavailable(f"the peer venv at {VENV} has no CPU torch")
    return python


def _command(python: Path, script: str, args: list[str]) -> list[str]:
    return [str(python), str(PEER_DIR / script), *args]


def _result(script: str, returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    if returncode != 0:
        raise PeerUnavailable(f"{script} failed: {stderr.strip().splitlines()[-1:]}")
    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as error:
        raise PeerUnavailable(
            f"{script} printed no JSON result ({type(error).__name__}): {stdout.strip()[-200:]!r}"
        ) from None


def pinned(command: list[str], cpus: set[int] | None) -> list[str]:
    """`command`, restricted to `cpus` (None: unchanged). A small Python trampoline sets its own CPU
    affinity, which exec keeps, and execs the command: thread pools sized from the CPUs a process
    may use (XLA's, torch's) then see only these. (A subprocess `preexec_fn` would run Python in a
    forked child of this multithreaded process, which can deadlock.)"""
    if cpus is None:
        return command
    trampoline = f"import os, sys; os.sched_setaffinity(0, {sorted(cpus)}); os.execvp(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", trampoline, *command]


def _run(python: Path, script: str, args: list[str], timeout: float, cpus: set[int] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        pinned(_command(python, script, args), cpus), capture_output=True, text=True, cwd=PEER_DIR, timeout=timeout
    )
    return _result(script, done.returncode, done.stdout, done.stderr)


def _run_at_once(python: Path, script: str, args: list[str], copies: int, timeout: float) -> list[dict[str, Any]]:
    """`copies` processes of the same peer run started together; their results in start order. Their
    output goes to files (a pipe that nobody reads while waiting on another copy could stall one);
    all share one deadline, and every copy still running at an error is killed."""
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="lnscope-peer-") as tmp:
        outs = [(Path(tmp) / f"{i}.out", Path(tmp) / f"{i}.err") for i in range(copies)]
        try:
            for out, err in outs:
                with out.open("w") as stdout, err.open("w") as stderr:
                    procs.append(
                        subprocess.Popen(
                            _command(python, script, args), stdout=stdout, stderr=stderr, text=True, cwd=PEER_DIR
                        )
                    )
            deadline = time.monotonic() + timeout
            for proc in procs:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return [
            _result(script, proc.returncode, out.read_text(), err.read_text()) for proc, (out, err) in zip(procs, outs)
        ]


def _train_args(
    *, layers: int, d_model: int, batch: int, seq: int, steps: int, warmup: int, threads: int, device: str = "cpu"
) -> list[str]:
    return [
        "--placement",
        "pre",
        "--layers",
        str(layers),
        "--d-model",
        str(d_model),
        "--heads",
        "4",
        "--ffn",
        str(4 * d_model),
        "--batch",
        str(batch),
        "--seq",
        str(seq),
        "--probes",
        "interleave",
        "--threads",
        str(threads),
        "--steps",
        str(steps),
        "--warmup-steps",
        str(warmup),
        "--cka-impl",
        "batched",
        "--device",
        device,
    ]


def _step_times(out: dict[str, Any]) -> dict[str, Any]:
    # median_runq_wait_ms: how long the peer's threads waited for a CPU per step (machine load);
    # torch's OpenMP threads degrade far more than XLA's when the cores are oversubscribed.
    try:
        return {
            "plain_ms": out["timing_off"]["median_step_ms"],
            "probed_ms": out["timing_on"]["median_step_ms"],
            "runq_wait_ms": out["timing_off"].get("median_runq_wait_ms"),
            "torch": out["torch"],
            "timed_window_unix_s": out.get("timed_window_unix_s"),
        }
    except (KeyError, TypeError, AttributeError) as error:
        raise PeerUnavailable(f"the peer's result lacks its step times ({type(error).__name__}: {error})") from None


def train_steps(
    python: Path,
    *,
    layers: int,
    d_model: int,
    batch: int,
    seq: int,
    steps: int,
    warmup: int,
    threads: int = 2,
    cpus: set[int] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Median plain / probed step times (ms) of the peer, probes toggled step by step in one process
    (restricted to `cpus` if given; on torch device `device`)."""
    args = _train_args(
        layers=layers, d_model=d_model, batch=batch, seq=seq, steps=steps, warmup=warmup, threads=threads, device=device
    )
    return _step_times(_run(python, "torch_probe_bench.py", args, timeout=1800, cpus=cpus))


def train_steps_at_once(
    python: Path,
    *,
    copies: int,
    layers: int,
    d_model: int,
    batch: int,
    seq: int,
    steps: int,
    warmup: int,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """`train_steps` of `copies` peer processes running at once, `threads` threads each: how a sweep
    written with the peer can fill the cores with independent runs (one per core) instead of one run
    on every core. Each process's medians, in start order."""
    args = _train_args(
        layers=layers, d_model=d_model, batch=batch, seq=seq, steps=steps, warmup=warmup, threads=threads
    )
    return [_step_times(out) for out in _run_at_once(python, "torch_probe_bench.py", args, copies, timeout=1800)]


def seed_sweep(
    python: Path, *, layers: int, d_model: int, batch: int, seq: int, seeds: int, threads: int = 2, device: str = "cpu"
) -> dict[str, Any]:
    """Seconds for the peer's init study of `seeds` seeds (a loop: build, probed forward/backward)."""
    args = [
        "--layers",
        str(layers),
        "--d-model",
        str(d_model),
        "--ffn",
        str(4 * d_model),
        "--batch",
        str(batch),
        "--seq",
        str(seq),
        "--seeds",
        str(seeds),
        "--threads",
        str(threads),
        "--device",
        device,
    ]
    return _run(python, "torch_seed_sweep.py", args, timeout=1800)
