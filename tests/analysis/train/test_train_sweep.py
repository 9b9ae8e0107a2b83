"""Sweeps: file parsing and its errors, a grid run from Python, a sweep killed with SIGKILL and run
again (finished runs intact and not recomputed, no partial file), the seed axis sharded over 4
CPU devices giving the unsharded numbers, a grid split into job-array shards (--shard i/N) giving the
unsharded sweep's runs, and the summary's progress text and final validation loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import cli
from analysis.train import load_runs, train
from analysis.train.sweep import (
    final_val_loss,
    load_sweep,
    parse_shard,
    progress_text,
    run_sweep,
    shard_indices,
    sweep_from_dict,
)

ROOT = Path(__file__).resolve().parents[3]
BASE = {
    "steps": 6,
    "seeds": 2,
    "probe_every": 0,
    "eval_every": 3,
    "eval_batches": 2,
    "model": {"arch": "decoder", "layers": 2, "d_model": 16, "heads": 2, "d_ff": 32, "vocab": 32, "max_len": 32},
    "task": {"name": "markov", "seq_len": 16, "batch_size": 4},
}
# Sharded vs unsharded: XLA compiles the per-device program for 1 seed instead of 4 (float32 reordering).
SHARD_RTOL = 1e-4


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(ROOT / ".jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1",
        "JAX_NUMPY_DTYPE_PROMOTION": "strict",
    }


def test_sweep_file_round_trip(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        textwrap.dedent("""
        [base]
        steps = 6
        seeds = 3
        model = { arch = "decoder", layers = 2 }
        task.name = "copy"

        [grid]
        model.placement = ["post", "pre"]
        "optim.lr" = [3e-4, 1e-3]
    """)
    )
    sweep = load_sweep(path)
    configs = sweep.configs()
    assert [(c.model.placement, c.optim.lr) for c in configs] == [
        ("post", 3e-4),
        ("post", 1e-3),
        ("pre", 3e-4),
        ("pre", 1e-3),
    ]
    assert all(c.seeds == (0, 1, 2) and c.task.name == "copy" and c.model.layers == 2 for c in configs)
    json_path = tmp_path / "s.json"
    json_path.write_text(json.dumps({"base": {"steps": 6}, "grid": {"model.layers": [1, 2]}}))
    assert [c.model.layers for c in load_sweep(json_path).configs()] == [1, 2]


@pytest.mark.parametrize(
    "data, match",
    [
        (
            {"base": {}, "grid": {"optim.lr": [1e-3]}, "runs": 3},
            r"unknown sweep key\(s\) \['runs'\]; valid keys: base, grid",
        ),
        ({"base": {"optim": {"rate": 1}}, "grid": {"optim.lr": [1e-3]}}, r"unknown config field 'optim.rate'"),
        ({"base": {"epochs": 3}, "grid": {"optim.lr": [1e-3]}}, r"unknown config field 'epochs'"),
        ({"grid": {"model.depth": [1, 2]}}, r"unknown config field 'model.depth'; valid choices: model.arch"),
        ({"base": {"steps": 5}}, r"the sweep's grid is empty"),
        ({"grid": {}}, r"the sweep's grid is empty"),
        ({"grid": {"optim.lr": []}}, r"grid field 'optim.lr' has no values"),
        ({"grid": {"optim.lr": 1e-3}}, r"grid field 'optim.lr' must be a list"),
        ({"grid": {"optim.lr": [1e-3, -1.0]}}, r"lr must be > 0"),
        ({"grid": {"model.placement": ["post", "postln"]}}, r"unknown placement 'postln'; valid choices: post, pre"),
    ],
)
def test_bad_sweep_is_a_clear_error(data, match):
    with pytest.raises(ValueError, match=match):
        sweep_from_dict(data)


def test_bad_sweep_files(tmp_path):
    (tmp_path / "bad.toml").write_text("[grid\n")
    with pytest.raises(ValueError, match=r"is not valid TOML"):
        load_sweep(tmp_path / "bad.toml")
    (tmp_path / "s.yaml").write_text("grid: {}")
    with pytest.raises(ValueError, match=r"must end in .toml or .json"):
        load_sweep(tmp_path / "s.yaml")
    with pytest.raises(ValueError, match=r"cannot be read"):
        load_sweep(tmp_path / "missing.toml")


def test_grid_from_python_and_load_runs(tmp_path):
    table = run_sweep({"base": BASE, "grid": {"optim.lr": [1e-3, 3e-3]}}, tmp_path, progress=False)
    assert list(table["optim.lr"]) == [1e-3, 3e-3] and not table["skipped"].any()
    curves = load_runs(tmp_path)
    assert sorted(curves["lr"].unique()) == [1e-3, 3e-3] and set(curves["run"]) == set(table["run_id"])
    again = run_sweep({"base": BASE, "grid": {"optim.lr": [1e-3, 3e-3]}}, tmp_path, progress=False)
    assert again["skipped"].all()


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    """A run folder's result files (not the scaffolding of an unfinished run: partial/, started.json,
    which a kill right after run.json can leave and the rerun removes)."""
    scaffolding = lambda rel: rel.parts[0] == "partial" or rel.name == "started.json"
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file() and not scaffolding(p.relative_to(folder))
    }


@pytest.mark.slow
def test_sigkilled_sweep_reruns_without_recomputing_or_partial_files(tmp_path):
    base = {**BASE, "steps": 400, "checkpoint_every": 50, "eval_every": 100}
    sweep = {"base": base, "grid": {"optim.lr": [1e-3, 2e-3, 3e-3]}}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep))
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "analysis.cli", "sweep", str(path), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not list(out.glob("*/run.json")):  # kill once the first run has finished
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the sweep did not finish a run in time"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finished = {p.parent.name: _files(p.parent) for p in out.glob("*/run.json")}
    assert 1 <= len(finished) < 3, "killed midway: some runs finished, not all"

    table = run_sweep(path, out, progress=False)
    assert set(table.loc[table["skipped"], "run_id"]) == set(finished), "finished runs are read back"
    for run_id, files in finished.items():
        assert _files(out / run_id) == files, f"finished run {run_id} was touched"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or "tmp" in p.name], "a partial file is left"
    assert not list(out.glob("*/partial")) and not list(out.glob("*/started.json"))
    # Every run, resumed or not, holds the numbers of an uninterrupted in-memory run.
    for cfg, run_id in zip(load_sweep(path).configs(), table["run_id"]):
        stored = load_runs(out / run_id)[["seed", "step", "quantity", "value"]]
        fresh = train(cfg).curves[["seed", "step", "quantity", "value"]]
        pd.testing.assert_frame_equal(stored, fresh, check_exact=True)


SHARDED = """
import json, sys
import jax
from analysis.train import run_sweep, load_runs
from analysis.train.sweep import sweep_from_dict
assert len(jax.devices()) == 4, jax.devices()
sweep = sweep_from_dict(json.loads(sys.argv[1]))
run_sweep(sweep, sys.argv[2] + "/sharded", progress=False)
run_sweep(sweep, sys.argv[2] + "/single", devices=jax.devices()[:1], progress=False)
"""


@pytest.mark.slow
def test_sharded_sweep_equals_unsharded(tmp_path):
    sweep = {"base": {**BASE, "seeds": 4, "eval_every": 0}, "grid": {"optim.lr": [1e-3, 3e-3]}}
    # the suite's code generation flags (make test's -O0) kept: both sides compile the same way either way
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = {**_env(), "XLA_FLAGS": flags}
    done = subprocess.run(
        [sys.executable, "-c", SHARDED, json.dumps(sweep), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sharded, single = load_runs(tmp_path / "sharded", "runs"), load_runs(tmp_path / "single", "runs")
    assert len(sharded) == len(single) == 8
    for f in sorted((tmp_path / "sharded").glob("*/run.json")):
        assert json.loads(f.read_text())["info"]["devices"] == 4
    for f in sorted((tmp_path / "single").glob("*/run.json")):
        assert json.loads(f.read_text())["info"]["devices"] == 1
    a = load_runs(tmp_path / "sharded").sort_values(["run", "seed", "quantity", "step"])
    b = load_runs(tmp_path / "single").sort_values(["run", "seed", "quantity", "step"])
    assert list(a["run"]) == list(b["run"]) and len(a) > 0
    np.testing.assert_allclose(a["value"].to_numpy(), b["value"].to_numpy(), rtol=SHARD_RTOL)


@pytest.mark.parametrize("runs", [0, 1, 4, 7, 12, 30])
def test_shards_are_disjoint_and_cover_the_grid(runs):
    for count in range(1, 10):
        shards = [shard_indices(runs, (i, count)) for i in range(count)]
        flat = [index for part in shards for index in part]
        assert sorted(flat) == list(range(runs)) and len(flat) == len(set(flat)), (runs, count)
        assert all(index % count == i for i, part in enumerate(shards) for index in part)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1, "balanced: sizes differ by at most one"
        assert shards == [shard_indices(runs, (i, count)) for i in range(count)], "deterministic"


@pytest.mark.parametrize(
    "text, match",
    [
        ("4/4", r"--shard '4/4': the shard index i must be in 0\.\.3 \(0 <= i < N = 4\), got 4"),
        ("-1/4", r"--shard '-1/4': the shard index i must be in 0\.\.3"),
        ("0/0", r"--shard '0/0': the number of shards N must be >= 1, got 0"),
        ("1.5/4", r"--shard '1\.5/4' is not i/N: give two integers with 0 <= i < N"),
        ("2", r"--shard '2' is not i/N"),
        ("a/b", r"--shard 'a/b' is not i/N"),
        ("/4", r"--shard '/4' is not i/N"),
    ],
)
def test_bad_shard_is_refused_before_compute(tmp_path, capsys, text, match):
    with pytest.raises(ValueError, match=match):
        parse_shard(text)
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"base": BASE, "grid": {"optim.lr": [1e-3, 3e-3]}}))
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", str(path), "--out", str(out), "--no-progress", f"--shard={text}"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"--shard {text!r}" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists(), "refused before any compute"


def test_bad_shard_from_python():
    assert parse_shard("3/4") == (3, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    for shard, match in [((2, 2), r"shard \(2, 2\): the shard index i must be in 0\.\.1"), ((0, 1.0), r"integers")]:
        with pytest.raises(ValueError, match=match):
            run_sweep({"base": BASE, "grid": {"optim.lr": [1e-3]}}, "/nonexistent/never", shard=shard)


def test_progress_text_names_the_run_and_the_diverged_seeds():
    assert progress_text("c84ba490ffff", skipped=False, diverged_seeds=[0]) == "run c84ba490, diverged seeds: 0"
    assert progress_text("c84ba490ffff", skipped=False, diverged_seeds=[0, 2]) == "run c84ba490, diverged seeds: 0, 2"
    assert progress_text("c84ba490ffff", skipped=False, diverged_seeds=[]) == "run c84ba490, no seed diverged"
    assert progress_text("c84ba490ffff", skipped=True, diverged_seeds=[]) == "run c84ba490, read back from the store"


def test_final_val_loss_is_the_seed_mean_of_the_last_finite_evaluation():
    rows = [
        (0, 3, "val_loss", 4.0),
        (0, 6, "val_loss", 2.0),  # seed 0's last
        (1, 6, "val_loss", 3.0),  # seed 1's last
        (1, 3, "val_loss", 5.0),
        (2, 3, "val_loss", 1.0),
        (2, 6, "val_loss", np.nan),  # seed 2 diverged: its last evaluation is NaN, left out
        (0, 6, "loss", 100.0),  # not a validation loss
    ]
    curves = pd.DataFrame(rows, columns=["seed", "step", "quantity", "value"])
    assert final_val_loss(curves) == 2.5
    assert final_val_loss(curves, diverged_seeds=[1]) == 2.0, "a diverged seed's last evaluation is no final loss"
    assert np.isnan(final_val_loss(curves, diverged_seeds=[0, 1, 2])), "every seed diverged"
    assert np.isnan(final_val_loss(curves[curves["seed"] == 2])), "no finite last evaluation"
    assert np.isnan(final_val_loss(curves[curves["quantity"] == "loss"])), "no evaluation ran"


def test_every_shard_into_one_store_equals_the_unsharded_sweep(tmp_path):
    sweep = {"base": BASE, "grid": {"optim.lr": [1e-3, 3e-3], "optim.warmup_steps": [0, 2]}}  # 2x2, one program
    whole = run_sweep(sweep, tmp_path / "whole", progress=False)
    assert len(whole) == 4
    parts = [run_sweep(sweep, tmp_path / "shared", progress=False, shard=(i, 3)) for i in range(3)]
    for i, part in enumerate(parts):  # each shard's table lists its own runs: grid indices i, i + 3, ...
        assert list(part["run_id"]) == list(whole["run_id"].iloc[i::3]) and not part["skipped"].any()
    joined = pd.concat(parts).set_index("run_id").loc[whole["run_id"]].reset_index()
    pd.testing.assert_frame_equal(
        joined.drop(columns=["folder", "seconds"]), whole.drop(columns=["folder", "seconds"]), check_exact=True
    )
    key = ["run", "seed", "quantity", "step"]
    a = load_runs(tmp_path / "shared").sort_values(key).reset_index(drop=True)
    b = load_runs(tmp_path / "whole").sort_values(key).reset_index(drop=True)
    assert set(a["run"]) == set(whole["run_id"]) and len(a) > 0
    pd.testing.assert_frame_equal(a[[*key, "value"]], b[[*key, "value"]], check_exact=True)
    # The summary's final validation loss: the seed mean of what load_runs calls each seed's final one.
    per_seed = load_runs(tmp_path / "shared", "runs").groupby("run")["final_val_loss"].mean()
    assert whole["final_val_loss"].notna().all()
    np.testing.assert_array_equal(whole["final_val_loss"].to_numpy(), per_seed.loc[whole["run_id"]].to_numpy())
    # A shard run again reads its runs back; the other shards' runs are left alone.
    again = run_sweep(sweep, tmp_path / "shared", progress=False, shard=(1, 3))
    assert again["skipped"].all() and list(again["run_id"]) == list(parts[1]["run_id"])


def test_summary_of_a_diverged_run_has_no_final_val_loss(tmp_path):
    table = run_sweep({"base": BASE, "grid": {"optim.lr": [1e-3, 10.0]}}, tmp_path, progress=False)
    assert list(table["diverged_seeds"]) == [0, 2]
    assert np.isfinite(table["final_val_loss"].iloc[0]) and np.isnan(table["final_val_loss"].iloc[1])
