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
from pathlib import Path
from typing import Any

PEER_DIR = Path(__file__).resolve().parent / "peer"
VENV = Path(os.environ.get("TORCHPEER_VENV", "/tmp/torchpeer"))


class PeerUnavailable(RuntimeError):
    """The peer's venv is missing and could not be made; the message is the reason."""


def ensure_venv(setup: bool) -> Path:
    """The peer venv's python; with `setup`, run setup.sh first (idempotent, ~1 min the first time)."""
    python = VENV / "bin" / "python"
    if setup:
        done = subprocess.run(["bash", str(PEER_DIR / "setup.sh")], capture_output=True, text=True,
                              env={**os.environ, "TORCHPEER_VENV": str(VENV)}, timeout=1800)  # fmt: skip
        if done.returncode != 0:
            raise PeerUnavailable(f"setup.sh failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    if not python.exists():
        raise PeerUnavailable(f"no peer venv at {VENV} (run benchmarks/peer/setup.sh, or drop --no-peer-setup)")
    check = subprocess.run([str(python), "-c", "import torch; assert '+cpu' in torch.__version__"], capture_output=True,
                           timeout=120)  # fmt: skip
    if check.returncode != 0:
        raise PeerUnavailable(f"the peer venv at {VENV} has no CPU torch")
    return python


def _run(python: Path, script: str, args: list[str], timeout: float) -> dict[str, Any]:
    done = subprocess.run([str(python), str(PEER_DIR / script), *args], capture_output=True, text=True,
                          cwd=PEER_DIR, timeout=timeout)  # fmt: skip
    if done.returncode != 0:
        raise PeerUnavailable(f"{script} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def train_steps(python: Path, *, layers: int, d_model: int, batch: int, seq: int, steps: int, warmup: int,
                threads: int = 2) -> dict[str, float]:
    """Median plain / probed step times (ms) of the peer, probes toggled step by step in one process."""
    args = ["--placement", "pre", "--layers", str(layers), "--d-model", str(d_model), "--heads", "4",
            "--ffn", str(4 * d_model), "--batch", str(batch), "--seq", str(seq), "--probes", "interleave",
            "--threads", str(threads), "--steps", str(steps), "--warmup-steps", str(warmup),
            "--cka-impl", "batched"]  # fmt: skip
    out = _run(python, "torch_probe_bench.py", args, timeout=1800)
    # median_runq_wait_ms: how long the peer's threads waited for a CPU per step (machine load);
    # torch's OpenMP threads degrade far more than XLA's when the cores are oversubscribed.
    return {"plain_ms": out["timing_off"]["median_step_ms"], "probed_ms": out["timing_on"]["median_step_ms"],
            "runq_wait_ms": out["timing_off"].get("median_runq_wait_ms"), "torch": out["torch"]}  # fmt: skip


def seed_sweep(python: Path, *, layers: int, d_model: int, batch: int, seq: int, seeds: int,
               threads: int = 2) -> dict[str, Any]:
    """Seconds for the peer's init study of `seeds` seeds (a loop: build, probed forward/backward)."""
    args = ["--layers", str(layers), "--d-model", str(d_model), "--ffn", str(4 * d_model), "--batch", str(batch),
            "--seq", str(seq), "--seeds", str(seeds), "--threads", str(threads)]  # fmt: skip
    return _run(python, "torch_seed_sweep.py", args, timeout=1800)
