"""benchmarks/user_step.py's plumbing: the summary's medians and ratios from hand-made rows, a bad
environment named before any run, and (slow) one tiny round of a script, a real Jupyter kernel from
lnscope's spec and a stand-in for the peer's python, each row read back. Not whether a goal is met."""

from __future__ import annotations

import importlib.util
import math

import pytest

from benchmarks import peer, user_step
from tests.benchmarks.test_peer import _fake_python


def test_summary_medians_and_the_peers_ratios():
    rows = {
        "script": [
            {"plain_ms": 10.0, "probed_ms": 12.0, "cpu_ms_per_call": 50.0},
            {"plain_ms": 30.0, "probed_ms": 14.0, "cpu_ms_per_call": 70.0},
            {"plain_ms": 20.0, "probed_ms": 40.0, "cpu_ms_per_call": 60.0},
        ],
        "kernel": [{"plain_ms": 8.0, "probed_ms": 10.0}],
        "peer": [{"plain_ms": 40.0, "probed_ms": 7.0}, {"plain_ms": 20.0, "probed_ms": 7.0}],
    }
    summary = user_step.summarize(rows)
    # per-call CPU time only where every row of the environment has it
    assert summary["median_ms"]["script"] == {"plain_ms": 20.0, "probed_ms": 14.0, "cpu_ms_per_call": 60.0}
    assert summary["median_ms"]["peer"] == {"plain_ms": 30.0, "probed_ms": 7.0}
    assert summary["peer_over_lnscope"] == {
        "script": {"plain": 1.5, "probed": 0.5},
        "kernel": {"plain": 3.75, "probed": 0.7},
    }
    without_peer = user_step.summarize({"script": rows["script"], "peer": []})
    assert without_peer["peer_over_lnscope"] == {"script": {"plain": None, "probed": None}}


def test_a_bad_environment_is_named_with_the_valid_choices(capsys):
    with pytest.raises(SystemExit):
        user_step.main(["--environments", "script,notebook"])
    err = capsys.readouterr().err
    assert "notebook" in err and all(env in err for env in user_step.ENVIRONMENTS)


@pytest.mark.parametrize(
    "option", ["--rounds", "--steps", "--layers", "--d-model", "--batch", "--seq", "--peer-threads"]
)
@pytest.mark.parametrize("bad", ["0", "-2", "x"])
def test_a_size_that_is_not_a_positive_whole_number_is_named(option, bad, capsys):
    with pytest.raises(SystemExit):
        user_step.main([option, bad])
    assert f"argument {option}: {bad!r} is not a whole number >= 1" in capsys.readouterr().err


def test_every_lnscope_environment_states_its_allocator():
    assert set(user_step.EXPECTED_ALLOCATOR) == set(user_step.LNSCOPE_ENVIRONMENTS)
    assert set(user_step.ENVIRONMENTS) == {*user_step.LNSCOPE_ENVIRONMENTS, "peer"}


@pytest.mark.slow
@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("jupyter_client", "ipykernel")), reason="no Jupyter kernel here"
)
def test_one_tiny_round_in_a_script_a_kernel_and_the_peer(tmp_path, monkeypatch, capsys):
    """The real script and kernel processes at tiny sizes (the kernel started from lnscope's spec
    and checked to have mimalloc loaded, the script to have glibc tuned); the peer is a stand-in
    that prints the peer's JSON line, so its venv is not needed."""
    fake = _fake_python(tmp_path, sleep=0.0)
    monkeypatch.setattr(peer, "ensure_venv", lambda setup: fake)
    argv = "--rounds 1 --steps 1 --layers 2 --d-model 16 --batch 2 --seq 8 --environments script,kernel,peer"
    summary = user_step.main([*argv.split(), "--json", str(tmp_path / "summary.json")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('{"environment"')]
    assert [line.split('"')[3] for line in lines] == ["script", "kernel", "peer"]
    for env in ("script", "kernel"):
        times = summary["median_ms"][env]
        assert all(math.isfinite(times[k]) and times[k] > 0 for k in ("plain_ms", "probed_ms", "cpu_ms_per_call"))
        assert times["faults_per_call"] >= 0  # none at all is possible at these sizes
        # the stand-in peer's fixed medians (test_peer.FAKE) over lnscope's own
        assert summary["peer_over_lnscope"][env] == {
            "plain": 10.0 / times["plain_ms"],
            "probed": 12.5 / times["probed_ms"],
        }
    assert (tmp_path / "summary.json").exists() and summary["sizes"]["d_model"] == 16
