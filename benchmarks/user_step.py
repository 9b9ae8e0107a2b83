"""A user's own probed step, outside lnscope's programs, against the PyTorch peer's same step.

The step as a user writes it with the public API (benchmarks.steps: `optax.adam` and
`probe_program_with_grads` with `analysis.probe.STEP_PROBES`; decoder Pre-LN, d=128, 6 layers,
batch 8 x 64), run in fresh processes that do not re-execute themselves, one of each environment
per round (the order rotated round by round, so no environment always runs first):

- `glibc`: a plain `python my_script.py` with glibc's malloc as it comes (`LNSCOPE_ALLOCATOR=system`);
- `script`: the same script with lnscope's default: importing `analysis` tunes glibc's malloc
  (`analysis.allocator.tune_system_allocator`);
- `mimalloc`: the same with mimalloc preloaded through the environment
  (`LD_PRELOAD=$(python -m analysis.allocator)`, what lnscope's Jupyter kernel sets);
- `kernel`: the same code executed inside a real Jupyter kernel started from lnscope's kernel spec
  (`analysis.allocator.install_kernel`, installed into a temporary folder so the kernel spec is this
  checkout's);
- `peer`: the PyTorch peer's step with its hooks (benchmarks/peer.py, matched to `STEP_PROBES` as
  `python -m benchmarks` matches it: `torch_speedup_*_d128`).

Prints one JSON line per process and a summary: each environment's median plain and probed step
time over the rounds, and the peer's median over each lnscope environment's (`peer_over_lnscope`,
above 1 = lnscope is the faster). Numbers go to benchmarks/README.md.

    python -m benchmarks.user_step                 # 3 rounds of every environment
    python -m benchmarks.user_step --rounds 1 --steps 2 --layers 2 --d-model 16 --batch 2 --seq 8   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from benchmarks.args import positive_int

ROOT = Path(__file__).resolve().parents[1]

Environment = Literal["glibc", "script", "mimalloc", "kernel", "peer"]
ENVIRONMENTS: tuple[Environment, ...] = get_args(Environment)
LNSCOPE_ENVIRONMENTS: tuple[Environment, ...] = ("glibc", "script", "mimalloc", "kernel")
# What each lnscope environment's process must report: (mimalloc loaded, glibc's malloc tuned).
EXPECTED_ALLOCATOR = {
    "glibc": (False, False),
    "script": (False, True),
    "mimalloc": (True, False),
    "kernel": (True, False),
}
PROCESS_TIMEOUT_S = 1800

# The user's step, the same text in a script and in a kernel's cell; the sizes are formatted in.
# Beside the medians, the process's CPU time and minor page faults per timed call: on a shared
# machine the wall times move with the load, these much less.
STEP_CODE = """
import json, resource
import jax
from analysis.allocator import active, system_allocator_tuned
from analysis.probe import STEP_PROBES
from benchmarks.steps import StepPair, median_ms
from benchmarks.suite import decoder_config
def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_minflt
with jax.numpy_dtype_promotion("standard"):
    pair = StepPair(decoder_config({layers}, {d_model}), STEP_PROBES, {batch}, {seq})
    pair.compile()
    before = usage()
    times = pair.round({steps})
    after = usage()
medians = {{f"{{name}}_ms": median_ms(times[name]) for name in ("plain", "probed")}}
calls = 2 * {steps}
per_call = {{"cpu_ms_per_call": 1e3 * (after[0] - before[0]) / calls,
            "faults_per_call": (after[1] - before[1]) / calls}}
print(json.dumps({{"mimalloc": active(), "glibc_tuned": system_allocator_tuned(), **medians, **per_call}}))
"""


PER_CALL = ("cpu_ms_per_call", "faults_per_call")


@dataclass(frozen=True)
class Sizes:
    """The step's model and batch, and how many timed calls of each kind one process makes."""

    layers: int = 6
    d_model: int = 128
    batch: int = 8
    seq: int = 64
    steps: int = 10

    def code(self) -> str:
        return STEP_CODE.format(**self.__dict__)


def _clean_env(preload: bool = False, opt_out: bool = False) -> dict[str, str]:
    """This process's environment without any allocator choice of ours, this checkout importable;
    `preload`: mimalloc through LD_PRELOAD, as lnscope's kernel spec sets it; `opt_out`: glibc's
    malloc left as it comes (LNSCOPE_ALLOCATOR=system)."""
    from analysis.allocator import OPT_OUT_VAR, REEXEC_VAR, library_path

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", REEXEC_VAR, OPT_OUT_VAR)}
    env["PYTHONPATH"] = str(ROOT)
    if preload:
        library = library_path()
        if library is None:
            raise RuntimeError("cmeel-mimalloc is not installed: no mimalloc to preload")
        env["LD_PRELOAD"] = str(library)
    if opt_out:
        env[OPT_OUT_VAR] = "system"
    return env


def _last_json(text: str, where: str) -> dict[str, Any]:
    lines = text.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"{where} printed no JSON result: {text.strip()[-300:]!r}") from None


def run_script(sizes: Sizes, preload: bool = False, opt_out: bool = False) -> dict[str, Any]:
    """The step in a fresh `python -c` process (a script: no re-exec, lnscope not a program)."""
    argv = [sys.executable, "-c", sizes.code()]
    done = subprocess.run(
        argv, env=_clean_env(preload, opt_out), cwd=ROOT, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S
    )
    if done.returncode != 0:
        raise RuntimeError(f"the script failed: {done.stderr.strip()[-500:]}")
    return _last_json(done.stdout, "the script")


def run_kernel(sizes: Sizes, startup_timeout: float = 120) -> dict[str, Any]:
    """The step executed in a Jupyter kernel started from lnscope's kernel spec (a fresh kernel)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    from analysis.allocator import KERNEL_NAME, install_kernel

    with tempfile.TemporaryDirectory(prefix="lnscope-kernel-") as prefix:
        folder = install_kernel(prefix=prefix)
        specs = KernelSpecManager(kernel_dirs=[str(folder.parent)])
        manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
        manager.start_kernel(env=_clean_env(), cwd=str(ROOT))
        client = manager.client()
        try:
            client.start_channels()
            client.wait_for_ready(timeout=startup_timeout)
            out: list[str] = []
            errors: list[str] = []

            def hook(msg: dict[str, Any]) -> None:
                content = msg["content"]
                if msg["msg_type"] == "stream" and content.get("name") == "stdout":
                    out.append(content["text"])
                elif msg["msg_type"] == "error":
                    errors.append("\n".join(content.get("traceback", [])[-3:]))

            reply = client.execute_interactive(sizes.code(), timeout=PROCESS_TIMEOUT_S, output_hook=hook)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"the kernel's cell failed: {''.join(errors)[-500:]}")
            return _last_json("".join(out), "the kernel's cell")
        finally:
            client.stop_channels()
            manager.shutdown_kernel(now=True)


def run_peer(python: Path, sizes: Sizes, threads: int = 2) -> dict[str, Any]:
    """The peer's plain and probed step (`--probes interleave`), as `python -m benchmarks` runs it
    (2 threads; `threads`: torch's intra-op threads)."""
    from benchmarks import peer

    return peer.train_steps(
        python,
        layers=sizes.layers,
        d_model=sizes.d_model,
        batch=sizes.batch,
        seq=sizes.seq,
        steps=sizes.steps,
        warmup=2,
        threads=threads,
    )


def run_one(environment: Environment, sizes: Sizes, peer_python: Path | None, peer_threads: int = 2) -> dict[str, Any]:
    if environment == "peer":
        assert peer_python is not None
        return run_peer(peer_python, sizes, peer_threads)
    if environment == "kernel":
        row = run_kernel(sizes)
    else:
        row = run_script(sizes, preload=environment == "mimalloc", opt_out=environment == "glibc")
    got, expected = (row["mimalloc"], row["glibc_tuned"]), EXPECTED_ALLOCATOR[environment]
    if got != expected:
        raise RuntimeError(f"the {environment} process reported (mimalloc, glibc tuned) {got}, expected {expected}")
    return row


def summarize(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each environment's median plain / probed ms over its rounds (and CPU time and page faults per
    call where its rows have them); for each lnscope environment the peer's median over its
    (`peer_over_lnscope`: above 1 = lnscope the faster), None without a peer."""
    kinds = ("plain_ms", "probed_ms")
    medians = {
        env: {k: statistics.median(r[k] for r in got) for k in (*kinds, *PER_CALL) if all(k in r for r in got)}
        for env, got in rows.items()
        if got
    }
    summary: dict[str, Any] = {"median_ms": medians, "peer_over_lnscope": {}}
    peer = medians.get("peer")
    for env in LNSCOPE_ENVIRONMENTS:
        if env in medians:
            summary["peer_over_lnscope"][env] = {
                k.removesuffix("_ms"): (None if peer is None else peer[k] / medians[env][k]) for k in kinds
            }
    return summary


def parse_environments(text: str) -> tuple[Environment, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in ENVIRONMENTS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown environment(s) {bad or [text]}; valid: {', '.join(ENVIRONMENTS)}")
    return names  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.user_step", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="rounds of one process per environment, the order rotated (default 3)",
    )
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps of each kind per process")
    parser.add_argument("--layers", type=positive_int, default=6, help="decoder layers of the step (default 6)")
    parser.add_argument("--d-model", type=positive_int, default=128, help="model width (default 128)")
    parser.add_argument("--batch", type=positive_int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--seq", type=positive_int, default=64, help="tokens per sequence (default 64)")
    parser.add_argument(
        "--environments",
        type=parse_environments,
        default=ENVIRONMENTS,
        help=f"comma-separated, of {', '.join(ENVIRONMENTS)} (default: all)",
    )
    parser.add_argument("--no-peer-setup", action="store_true", help="use an existing peer venv only")
    # On a machine shared with other work, torch's OpenMP threads wait for each other on the run queue
    # far more than XLA's pool does; one thread shows the peer's step without that.
    parser.add_argument("--peer-threads", type=positive_int, default=2, help="torch threads of the peer (default 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    sizes = Sizes(args.layers, args.d_model, args.batch, args.seq, args.steps)
    environments: list[Environment] = list(args.environments)
    summary_extra: dict[str, Any] = {"sizes": sizes.__dict__, "peer_threads": args.peer_threads}
    peer_python = None
    if "peer" in environments:
        from benchmarks import peer

        try:
            peer_python = peer.ensure_venv(setup=not args.no_peer_setup)
        except (peer.PeerUnavailable, subprocess.SubprocessError, OSError) as error:
            summary_extra["peer_unavailable"] = str(error)
            environments.remove("peer")
    rows: dict[str, list[dict[str, Any]]] = {env: [] for env in environments}
    loads = [os.getloadavg()[0]]
    for index in range(args.rounds):
        shift = index % len(environments)
        for env in environments[shift:] + environments[:shift]:
            row = run_one(env, sizes, peer_python, args.peer_threads)
            print(json.dumps({"environment": env, "round": index, **row}), flush=True)
            rows[env].append(row)
            loads.append(os.getloadavg()[0])
    summary = {**summarize(rows), **summary_extra, "load": loads}
    print(json.dumps(summary))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
