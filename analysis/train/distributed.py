"""Training on several hosts (or several processes of one host): join them into one JAX run, gather
results from all of them, and end the run with a clear error when one of them is lost.

    # the same script on every host (process_id 0 .. N-1; process 0 runs the coordinator)
    from analysis.train import distributed, train
    distributed.join("10.0.0.1:7777", num_processes=2, process_id=int(os.environ["RANK"]))
    result = train(cfg, out="/scratch/runs")      # seeds sharded over every process' devices

`join()` with no arguments detects SLURM, Open MPI and Cloud TPU settings (jax.distributed). After
it, `jax.devices()` spans every process, `train` shards a run's vmapped seed axis over all of them
(analysis.train.step.seed_sharding), `gather` brings each piece's results to every process, and only
process 0 (`writer()`) writes the store's files; every process takes part in the orbax checkpoints,
so every host must see the same `out` folder. On CPUs the processes exchange arrays with gloo
(JAX's CPU collectives over TCP).

A lost process (killed, crashed, its host gone): the others' next gather or checkpoint save (orbax
synchronises the processes with a collective) fails at once on the closed connection, or the
coordinator misses its heartbeat within `heartbeat_timeout_s`; they raise `PeerLost`
(`peer_loss_named`), or JAX's distributed service ends them, so no process waits forever. Nothing is
half-written: store files and checkpoints are written under temporary names and renamed when whole,
and a run without run.json is unfinished; starting every process again resumes it from its last
checkpoint. tests/analysis/train/test_multihost.py runs two processes on one machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
from jax.experimental import multihost_utils

# Seconds without a heartbeat after which a process counts as lost (JAX's own default is longer:
# a lost host would hold every other one that long).
HEARTBEAT_TIMEOUT_S = 30
# Seconds a process waits, at its end, for the others to end too (JAX's default is longer).
SHUTDOWN_TIMEOUT_S = 30
# Seconds the processes have to find each other at the start.
JOIN_TIMEOUT_S = 300


class PeerLost(RuntimeError):
    """Another process of this multi-process run stopped (killed, crashed, its host gone)."""


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def join(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
    shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S,
    join_timeout_s: int = JOIN_TIMEOUT_S,
) -> None:
    """Join this process to a multi-process JAX run: call first, before any JAX computation, in every
    process with the same `coordinator_address` ("host:port" of process 0) and `num_processes`, and
    its own `process_id` in 0 .. num_processes - 1. All three None: detected from SLURM, Open MPI or
    Cloud TPU. On CPUs the processes' collectives use gloo.

    Bad arguments are a ValueError naming the value before anything starts.
    """
    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ValueError("give coordinator_address, num_processes and process_id together, or none (auto-detected)")
    if coordinator_address is not None:
        host, _, port = str(coordinator_address).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"coordinator_address must be 'host:port' (process 0's), got {coordinator_address!r}")
        _positive_int("num_processes", num_processes)
        if not isinstance(process_id, int) or isinstance(process_id, bool) or not 0 <= process_id < num_processes:
            raise ValueError(f"process_id must be an integer in 0 .. {num_processes - 1}, got {process_id!r}")
    for name, value in (
        ("heartbeat_timeout_s", heartbeat_timeout_s),
        ("shutdown_timeout_s", shutdown_timeout_s),
        ("join_timeout_s", join_timeout_s),
    ):
        _positive_int(name, value)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPUs have no collectives otherwise
    jax.distributed.initialize(
        coordinator_address,
        num_processes,
        process_id,
        initialization_timeout=join_timeout_s,
        heartbeat_timeout_seconds=heartbeat_timeout_s,
        shutdown_timeout_seconds=shutdown_timeout_s,
    )


def writer() -> bool:
    """Whether this process writes the store's files: only process 0 does (the only one in a
    single-process run)."""
    return jax.process_index() == 0


def gather(tree: Any) -> Any:
    """Numpy copies of a tree of (possibly sharded) device arrays, whole on every process; across
    processes gathered from all of them, a lost process being a PeerLost naming what to do."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    with peer_loss_named("gathering results"):
        return multihost_utils.process_allgather(tree, tiled=True)


# gloo's CPU collectives report a closed connection as a ValueError ("UNKNOWN: Gloo AllGather failed:
# ... Connection reset by peer"), not as JAX's runtime error; its text names the transport.
GLOO_FAILURE = "Gloo"


def peer_failure_in(err: BaseException) -> BaseException | None:
    """The error behind `err` (itself, its causes and contexts, an exception group's members) that a
    collective raises when another process is gone: JAX's runtime error (the distributed service, a
    collective), or gloo's failed transport; else None."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, jax.errors.JaxRuntimeError) or (isinstance(e, ValueError) and GLOO_FAILURE in str(e)):
            return e
        todo.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])
    return None


@contextlib.contextmanager
def peer_loss_named(what: str) -> Iterator[None]:
    """Around a step that every process takes together (a gather, a checkpoint's save, whose orbax
    synchronises the processes with a collective): in a multi-process run, a failure that shows a
    process gone is raised as PeerLost naming what to do; anything else, and any failure of a
    single-process run, passes unchanged.

    Raises:
        PeerLost: `what` failed because another process of this run stopped.
    """
    try:
        yield
    except Exception as err:
        cause = peer_failure_in(err) if jax.process_count() > 1 else None
        if cause is None or isinstance(err, PeerLost):
            raise
        first = (str(cause).splitlines() or [type(cause).__name__])[0]
        raise PeerLost(
            f"process {jax.process_index()} of {jax.process_count()}: another process of this run stopped "
            f"while {what} ({first}); the run is unfinished and resumes from its last checkpoint when every "
            "process is started again"
        ) from err
