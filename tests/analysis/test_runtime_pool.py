"""No orphaned workers: the processes of compute_jobs' pool (workers started by
analysis.experiments.runs._start_worker, which calls analysis.runtime.end_with_parent) end within a
few seconds when their parent is SIGKILLed or SIGTERMed mid-job (before, they stayed alive under PID 1,
blocked writing to a pipe nobody read)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARENT = """
import multiprocessing, sys, time
from concurrent.futures import ProcessPoolExecutor
from analysis.experiments.runs import _start_worker, code_fingerprint

if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(code_fingerprint(), {}, 1, None))
    futures = [pool.submit(time.sleep, 600) for _ in range(4)]
    while len(pool._processes) < 2 or not all(p.pid for p in pool._processes.values()):
        time.sleep(0.05)
    time.sleep(3)  # the workers are in their job (initializer done)
    print(" ".join(str(p.pid) for p in pool._processes.values()), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """Every process whose parent is `pid` (the workers and multiprocessing's resource tracker)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_no_worker_outlives_its_parent(sig):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LNSCOPE_COMPILATION_CACHE": "off"}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    family: set[int] = set()
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2, "the pool started its workers"
        family = set(workers) | set(_children(parent.pid))
        assert all(_alive(p) for p in workers)
        parent.send_signal(sig)
        parent.wait(10)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [p for p in family if _alive(p)]
        assert not left, f"processes outlived their parent by 5 s: {left}"
    finally:
        parent.kill()
        for p in family | set(_children(parent.pid)):  # a failed test leaves nothing behind either
            if _alive(p):
                os.kill(p, signal.SIGKILL)
