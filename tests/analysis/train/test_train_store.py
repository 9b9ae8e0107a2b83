"""The results store and checkpoints: folder layout, atomic files, finished runs read back, resume from
a checkpoint giving the uninterrupted run's numbers, load_runs, load_model."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pandas as pd
import pytest

from analysis.probe import COLUMNS, probe_model
from analysis.probe.loss import loss_from_logits, model_inputs
from analysis.train import OptimConfig, TaskConfig, TrainConfig, load_model, load_runs, train
from analysis.train import checkpoint, store
from analysis.train.step import val_key
from analysis.train.tasks import prepare
from models import ModelConfig

TINY = dict(layers=2, d_model=16, heads=2, d_ff=32, vocab=32, max_len=32)
# A loaded model evaluated outside the vmapped program: float32 reordering only.
RELOAD_RTOL = 1e-5


def _cfg(**kw) -> TrainConfig:
    base = dict(model=ModelConfig(arch="decoder", **TINY), task=TaskConfig(name="markov", seq_len=16, batch_size=4),
                steps=6, seeds=(0, 1), probe_every=3, probes=("act_grad_norm", "param_grad_norm"), eval_every=3,
                eval_batches=2, checkpoint_every=2)  # fmt: skip
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    return out, train(_cfg(), out)


def test_run_folder_layout_and_json(finished):
    out, r = finished
    folder = out / r.run_id
    assert r.folder == folder and not r.skipped
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "curves.parquet", "probes.parquet", "run.json"]
    assert checkpoint.steps(folder) == [2, 4, 6]
    meta = json.loads((folder / "run.json").read_text())
    assert meta["run_id"] == r.run_id == store.config_hash(r.config, seed_programs=r.info["seed_programs"])
    assert meta["info"]["seed_programs"] == "per_seed"  # the CPU default for two seeds
    assert meta["status"] == {"0": {"status": "finished", "step": None}, "1": {"status": "finished", "step": None}}
    assert meta["config"]["optim"]["lr"] == 1e-3 and meta["config"]["seeds"] == [0, 1]
    assert {"jax", "flax", "devices", "git_commit"} <= set(meta["environment"])
    assert meta["info"]["task"]["entropy_rate"] > 0
    probes = pd.read_parquet(folder / "probes.parquet")
    assert list(probes.columns) == list(COLUMNS) and sorted(probes["step"].unique()) == [0, 3, 6]
    assert not list(folder.rglob("*.tmp"))


def test_finished_run_is_read_back_not_recomputed(finished):
    out, r = finished
    before = {p: p.stat().st_mtime_ns for p in (out / r.run_id).rglob("*") if p.is_file()}
    again = train(_cfg(), out)
    assert again.skipped and again.status == r.status
    pd.testing.assert_frame_equal(again.curves, r.curves)
    pd.testing.assert_frame_equal(again.probes, r.probes)
    assert before == {p: p.stat().st_mtime_ns for p in (out / r.run_id).rglob("*") if p.is_file()}


def test_vmapped_run_ids_are_those_stored_before_per_seed_programs():
    """The id of this config as the store computed it before the seed mode existed (commit 70fad0a):
    vmapped runs keep their folders. Update the literal only with a conscious STORE_VERSION bump."""
    cfg = _cfg(probe_every=0, eval_every=0, eval_batches=1, checkpoint_every=0)
    cfg = TrainConfig(model=cfg.model, task=cfg.task, steps=6, seeds=(0, 1))
    assert store.config_hash(cfg) == store.config_hash(cfg, seed_programs="vmapped") == "c6c3d59cde418b85"
    assert store.config_hash(cfg, seed_programs="per_seed") != "c6c3d59cde418b85"
    with pytest.raises(ValueError, match="unknown seed_programs 'per-seed'; valid choices: vmapped, per_seed"):
        store.config_hash(cfg, seed_programs="per-seed")
    # the execution fields ModelConfig held then are the plan's now: its numerics keep the id at the
    # float32 default, and give bfloat16 compute its own
    assert store.config_hash(cfg, numerics={"compute_dtype": None}) == "c6c3d59cde418b85"
    assert store.config_hash(cfg, numerics={"compute_dtype": "bfloat16"}) != "c6c3d59cde418b85"


def test_hash_changes_with_any_field():
    base = store.config_hash(_cfg())
    for changed in (_cfg(steps=7), _cfg(seeds=(0, 2)), _cfg(optim=OptimConfig(lr=3e-4)),
                    _cfg(task=TaskConfig(name="markov", seq_len=16, batch_size=4, data_seed=1)),
                    _cfg(probes=("act_grad_norm",))):  # fmt: skip
        assert store.config_hash(changed) != base
    assert store.config_hash(_cfg()) == base


@pytest.fixture(scope="module")
def finished_vmapped(tmp_path_factory):
    out = tmp_path_factory.mktemp("store_vmapped")
    return out, train(_cfg(), out, vmap_seeds=True)


@pytest.mark.parametrize("mode", ["per_seed", "vmapped"])
def test_killed_run_resumes_from_its_checkpoint_with_the_same_numbers(mode, finished, finished_vmapped, tmp_path):
    out, r = finished if mode == "per_seed" else finished_vmapped
    assert r.info["seed_programs"] == mode
    killed = tmp_path / r.run_id
    shutil.copytree(out / r.run_id, killed)
    # What a kill after the checkpoint at step 2 leaves: no results, later checkpoints unwritten,
    # an atomic write's temporary file and an orbax temporary folder.
    for name in ("run.json", "curves.parquet", "probes.parquet"):
        (killed / name).unlink()
    for step in ("4", "6"):
        shutil.rmtree(killed / "checkpoints" / step)
    # The partial rows an interrupted run had written at its step-2 checkpoint (here: a superset).
    store.write_partial(killed, r.curves, r.probes, 2)
    (killed / ".curves.parquet.abc123.tmp").write_bytes(b"half a parquet")
    # the default mode continues the run the way it was started (a vmapped run, too, on this CPU)
    resumed = train(_cfg(), tmp_path)
    assert resumed.run_id == r.run_id and resumed.info["seed_programs"] == mode
    assert resumed.info["resumed_from"] == 2 and not resumed.skipped
    pd.testing.assert_frame_equal(resumed.curves, r.curves, check_exact=True)
    pd.testing.assert_frame_equal(resumed.probes, r.probes, check_exact=True)
    assert not list(killed.rglob("*.tmp")) and not (killed / "partial").exists()


def test_a_stored_vmapped_run_is_read_back_by_the_default(finished_vmapped):
    """A store made elsewhere (an accelerator) or before per-seed programs: the CPU default reads the
    run back instead of training the config again under another id."""
    out, r = finished_vmapped
    again = train(_cfg(), out)
    assert again.skipped and again.run_id == r.run_id and again.info["seed_programs"] == "vmapped"
    assert [p.name for p in out.iterdir()] == [r.run_id]
    assert set(load_runs(out)["seed_programs"]) == {"vmapped"}


def test_load_model_gives_the_trained_model(finished):
    out, r = finished
    folder = out / r.run_id
    cfg = r.config
    data = prepare(cfg.task, cfg.model)
    for seed in cfg.seeds:
        model = load_model(folder, seed=seed)  # the latest checkpoint: the final model
        losses = [float(loss_from_logits(cfg.model, model(*model_inputs(cfg.model, b)), b))
                  for b in (data.batch(data.arrays, val_key(cfg.task.data_seed, i), "val") for i in range(cfg.eval_batches))]  # fmt: skip
        recorded = r.curves.query("quantity == 'val_loss' and step == 6 and seed == @seed")["value"].item()
        assert np.mean(losses) == pytest.approx(recorded, rel=RELOAD_RTOL)
        rows = probe_model(model, data.batch(data.arrays, jax.random.key(0)), ("act_grad_norm",), seed=seed)
        assert np.isfinite(rows["value"]).all()
    with pytest.raises(ValueError, match=r"no checkpoint at step 5 .* available steps: \[2, 4, 6\]"):
        load_model(folder, step=5)
    with pytest.raises(ValueError, match=r"seed 7 is not a seed of this run; valid choices: \[0, 1\]"):
        load_model(folder, seed=7)


def test_load_runs_tells_runs_apart(finished, tmp_path):
    out, r = finished
    other = train(_cfg(optim=OptimConfig(lr=3e-4), probe_every=0, checkpoint_every=0), out)
    curves = load_runs(out)
    assert set(curves["run"]) == {r.run_id, other.run_id}
    assert set(store.RUN_COLUMNS) <= set(curves.columns) and set(curves["seed_programs"]) == {"per_seed"}
    assert "optim.lr" in curves.columns and "probe_every" in curves.columns  # varying fields come along
    assert set(curves.groupby("run")["lr"].first()) == {1e-3, 3e-4}
    probes = load_runs(out, "probes")
    assert set(probes["run"]) == {r.run_id} and (probes["status"] == "finished").all()
    runs = load_runs(out, "runs")
    assert len(runs) == 4 and {"final_loss", "final_val_loss", "model.placement"} <= set(runs.columns)
    single = load_runs(out / r.run_id)
    assert set(single["run"]) == {r.run_id}
    with pytest.raises(ValueError, match=r"unknown what 'curve'; valid choices: curves, probes, runs"):
        load_runs(out, "curve")
    assert load_runs(tmp_path).empty
