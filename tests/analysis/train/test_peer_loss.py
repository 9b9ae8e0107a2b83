"""A lost process of a multi-process run is named (distributed.PeerLost) wherever the processes
meet, not only in the loop's gather: orbax's checkpoint save synchronises them with a gloo collective,
whose closed connection is a ValueError. The processes are simulated (process_count patched); the
real two-process run is tests/analysis/train/test_multihost.py."""

from __future__ import annotations

import os

import jax
import pytest

from analysis.train import checkpoint, distributed

# What a survivor's checkpoint save raised when the other process was killed (captured from
# test_multihost's kill test): orbax's sync_global_devices -> process_allgather over gloo.
GLOO_RESET = (
    "UNKNOWN: Gloo AllGather failed: [external/xla++third_party_ext+gloo/gloo/transport/tcp/pair.cc:538] "
    "Read error [127.0.0.1]:8077: Connection reset by peer"
)


@pytest.fixture
def two_processes(monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 0)


def _orbax_wrapped(err: BaseException) -> RuntimeError:
    """`err` as orbax passes it on: the context of another error."""
    try:
        try:
            raise err
        except BaseException:
            raise RuntimeError("checkpoint manager failed") from None
    except RuntimeError as wrapped:
        wrapped.__context__ = err
        return wrapped


@pytest.mark.parametrize(
    "err",
    [ValueError(GLOO_RESET), jax.errors.JaxRuntimeError("UNAVAILABLE: task 1 heartbeat timeout")],
    ids=["gloo", "jax_runtime"],
)
def test_a_collective_failing_in_a_multi_process_run_is_peer_lost(two_processes, err):
    for raised in (err, _orbax_wrapped(err)):
        with pytest.raises(distributed.PeerLost, match="process 0 of 2: another process of this run stopped") as info:
            with distributed.peer_loss_named("saving the checkpoint of step 20"):
                raise raised
        assert "while saving the checkpoint of step 20" in str(info.value) and info.value.__cause__ is raised


def test_other_failures_pass_unchanged(two_processes, monkeypatch):
    with pytest.raises(ValueError, match="bad shape"):  # not a transport's failure
        with distributed.peer_loss_named("gathering results"):
            raise ValueError("bad shape")
    with pytest.raises(OSError):  # a full disk is the store's error, named by checkpoint.save
        with distributed.peer_loss_named("saving"):
            raise OSError(28, "No space left on device")
    monkeypatch.setattr(jax, "process_count", lambda: 1)
    with pytest.raises(ValueError, match="Gloo"):  # one process has no peer to lose
        with distributed.peer_loss_named("gathering results"):
            raise ValueError(GLOO_RESET)


def test_a_multi_process_save_leaves_stderr_to_jax(two_processes, capfd):
    """JAX's distributed service may end a process inside a failed save (os.abort after its fatal
    log): in a multi-process run what reaches fd 2 there goes out at once, not to a held file."""
    with checkpoint._quiet_orbax() as failed:
        os.write(2, b"another task died\n")
        failed.append(RuntimeError("the save failed"))
        assert "another task died" in capfd.readouterr().err  # already out, inside the block


def test_a_single_process_failed_save_still_holds_orbax_noise_back(capfd):
    with checkpoint._quiet_orbax() as failed:
        os.write(2, b"a writer thread's traceback\n")
        failed.append(RuntimeError("the save failed"))
    assert "a writer thread's traceback" not in capfd.readouterr().err
