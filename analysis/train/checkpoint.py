"""Checkpoints with orbax-checkpoint: resumable runs, and trained models for notebooks.

A checkpoint at step s holds the training state of every seed *before* update s (parameters, AdamW
moments, and each seed's alive flag and divergence step), so a resumed run replays from step s and
gives the numbers an uninterrupted run gives. Orbax writes each checkpoint into a temporary folder
and renames it when complete, so a killed run never leaves a half-written checkpoint.

The state is saved as a flat dict of its leaves (keys are leaf indices); restoring rebuilds the
pytree from the abstract state of the same config, so no nnx/optax types pass through orbax.

Faults: a save that fails (disk full, read-only store, ...) removes its temporary folder and raises
the OSError underneath orbax's own errors (one line for the CLI, analysis.io.describe_os_error); Ctrl-C
during a save lets the save finish and is raised after it, so an interrupt never leaves orbax
writing at interpreter shutdown. Only the process holding the run's claim (analysis.train.store)
writes its checkpoints.

    model = load_model("runs/3f2a...", step=200, seed=1)     # an nnx model
    analysis.probe.probe_model(model, batch)                  # probe the trained model
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.nnx as nnx
import jax
import orbax.checkpoint as ocp

from analysis.train.config import from_dict
from analysis.train.step import abstract_states
from analysis.train.store import CHECKPOINTS, read_meta


def _manager(folder: Path, *, read_only: bool = False) -> ocp.CheckpointManager:
    # Readers neither create folders nor clean up (orbax's read_only mode would also work, with a
    # warning on every call).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,
        create=not read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(Path(folder).resolve() / CHECKPOINTS, options=options)


def _flat(tree: Any) -> dict[str, Any]:
    return {f"{i:06d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def save(folder: Path, step: int, states: Any) -> None:
    """Save the seed-stacked training state at `step` under `folder/checkpoints/` (blocking).
    A failure removes the temporary folder and raises the OSError orbax met, if any."""
    with _interrupt_after():
        with _quiet_orbax() as failed:
            manager = None
            try:
                manager = _manager(folder)
                manager.save(int(step), args=ocp.args.StandardSave(_flat(states)), force=True)
                manager.wait_until_finished()
                manager.close()
            except Exception as err:
                failed.append(err)
                if manager is not None:  # its writer threads end here, while their reports are held back
                    with contextlib.suppress(Exception):
                        manager.close()
        if not failed:
            return
        # Only now, once _quiet_orbax has let the failed save's writers end: a writer still running
        # would recreate the item folder inside the temporary one after an earlier removal.
        _remove_temporary_until_settled(folder)
        err = failed[0]
        cause = os_error_in(err)
        if cause is None:
            raise err
        raise OSError(
            cause.errno, cause.strerror or str(cause), cause.filename or str(Path(folder) / CHECKPOINTS)
        ) from err


SETTLE_CHECKS = 5  # removals of a failed save's temporary folders, each after a short wait
SETTLE_WAIT_S = 0.2


def _remove_temporary_until_settled(folder: Path) -> None:
    """remove_temporary, repeated until a short wait finds nothing recreated (a writer thread of the
    failed save that Python cannot join, tensorstore's own, may still create a folder)."""
    for _ in range(SETTLE_CHECKS):
        if not remove_temporary(folder):
            time.sleep(SETTLE_WAIT_S)
            if not remove_temporary(folder):
                return
        time.sleep(SETTLE_WAIT_S)


def remove_temporary(folder: Path) -> list[Path]:
    """Delete the temporary folders of unfinished checkpoint saves (orbax's `*.orbax-checkpoint-tmp*`)."""
    root = Path(folder) / CHECKPOINTS
    stale = [p for p in root.glob("*.orbax-checkpoint-tmp*")] if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind `err` (itself, its causes and contexts, an exception group's members), or
    one rebuilt from a message that names only its text ("No space left on device"); else None."""
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e
        todo.extend([e.__cause__, e.__context__, *getattr(e, "exceptions", ())])
    text = str(err)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        if os.strerror(code) in text:
            return OSError(code, os.strerror(code))
    return None


THREADS_END_S = 10.0  # how long a failed save's writer threads get to end (their reports held back)
CALLBACKS_END_S = 1.0  # and tensorstore's callbacks of the failed writes (threads Python does not see)


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[list[BaseException]]:
    """What orbax and tensorstore report during the block (absl error logs, tracebacks printed from
    their threads and C callbacks) held back: printed afterwards when the block went well, dropped
    when it failed (the block appends its error to the list it gets), so a failed save is one error,
    one line for the user, instead of a traceback per writer thread. A multi-process run holds back
    only the absl logs: what goes to stderr there may be the last words of a process ended by JAX."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    if not getattr(sys.excepthook, "lnscope_orbax_filter", False):
        sys.excepthook = _without_closed_loop(sys.excepthook)
    failed: list[BaseException] = []
    before = set(threading.enumerate())
    held = tempfile.TemporaryFile()
    sys.stderr.flush()
    saved = os.dup(2)
    # In a multi-process run JAX's distributed service may end this process at any moment (another
    # process lost): its last words must reach the real stderr, not the held file.
    if jax.process_count() == 1:
        os.dup2(held.fileno(), 2)
    try:
        yield failed
    finally:
        if failed:  # the failed save's writer threads report on their way out: let them, while held back
            deadline = time.monotonic() + THREADS_END_S
            for thread in set(threading.enumerate()) - before:
                try:
                    thread.join(max(0.0, deadline - time.monotonic()))
                except RuntimeError:  # listed while still starting (threading's limbo): nothing to wait for yet
                    continue
            time.sleep(CALLBACKS_END_S)  # tensorstore's own threads call back into the closed event loop
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        logger.setLevel(level)
        if not failed:
            held.seek(0)
            text = held.read()
            if text:
                sys.stderr.write(text.decode(errors="replace"))
        held.close()


def _without_closed_loop(hook: Any) -> Any:
    """`hook` except for "Event loop is closed": after a failed save, tensorstore's callbacks
    (C code reporting through sys.excepthook) still try to wake orbax's finished event loop; that
    traceback says nothing the save's own error does not."""

    def filtered(kind: type, value: BaseException, tb: Any) -> None:
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        hook(kind, value, tb)

    filtered.lnscope_orbax_filter = True  # type: ignore[attr-defined]
    return filtered


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Ctrl-C (SIGINT) during the block is held until it ends, then handled as it would have been."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, None)


def steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints of a run folder (sorted; [] when there are none)."""
    if not (Path(folder) / CHECKPOINTS).is_dir():
        return []
    manager = _manager(folder, read_only=True)
    out = sorted(manager.all_steps())
    manager.close()
    return out


def restore(folder: Path, step: int, abstract: Any) -> Any:
    """The state saved at `step`, as the pytree of `abstract` (ShapeDtypeStructs, with shardings to
    place the arrays on devices)."""
    leaves, treedef = jax.tree.flatten(abstract)
    manager = _manager(folder, read_only=True)
    flat = manager.restore(int(step), args=ocp.args.StandardRestore(_flat(abstract)))
    manager.close()
    if len(flat) != len(leaves):
        raise ValueError(
            f"checkpoint {folder}/{CHECKPOINTS}/{step} has {len(flat)} arrays; this config needs {len(leaves)}"
        )
    return jax.tree.unflatten(treedef, [flat[f"{i:06d}"] for i in range(len(leaves))])


def load_model(run_folder: Path | str, step: int | None = None, seed: int | None = None) -> nnx.Module:
    """The trained model of one seed at a checkpointed step, as an nnx module.

    Args:
        run_folder: a run's folder (DIR/<run_id>, as printed by `lnscope train`).
        step: a checkpointed step (None = the latest, the final model of a finished run).
        seed: one of the run's seeds (None = its first).

    The model is `build_model(cfg.model, seed)` after `step` updates; probe it with
    `analysis.probe.probe_model(model, batch, seed=seed)`.
    """
    run_folder = Path(run_folder)
    cfg = from_dict(read_meta(run_folder)["config"])
    available = steps(run_folder)
    if not available:
        raise ValueError(f"{run_folder} has no checkpoints")
    step = available[-1] if step is None else step
    if step not in available:
        raise ValueError(f"no checkpoint at step {step} in {run_folder}; available steps: {available}")
    seed = cfg.seeds[0] if seed is None else seed
    if seed not in cfg.seeds:
        raise ValueError(f"seed {seed} is not a seed of this run; valid choices: {list(cfg.seeds)}")
    graphdef, abstract = abstract_states(cfg)
    states = restore(run_folder, step, abstract)
    params = jax.tree.map(lambda a: a[cfg.seeds.index(seed)], states.params)
    return nnx.merge(graphdef, params)
