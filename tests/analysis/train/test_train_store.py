"""The results store and checkpoints: folder layout, atomic files, finished runs read back, resume from
a checkpoint giving the uninterrupted run's numbers, load_runs, load_model."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pandas as pd
import pytest

from analysis.execution import ExecutionPlan, default_plan
from analysis.identity import content_id
from analysis.probe import COLUMNS, probe_model
from analysis.probe.loss import loss_from_logits, model_inputs
from analysis.train import OptimConfig, TaskConfig, TrainConfig, checkpoint, load_model, load_runs, store, train
from analysis.train.config import to_dict
from analysis.train.step import val_key
from analysis.train.tasks import prepare
from tests.analysis.train.configs import tiny_run

# A loaded model evaluated outside the vmapped program: float32 reordering only.
RELOAD_RTOL = 1e-5


_cfg = tiny_run  # the shared tiny run (tests/analysis/train/configs.py)


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
    assert meta["run_id"] == r.run_id == store.config_hash(r.config)
    assert meta["info"]["seed_programs"] == "per_seed"  # the CPU default for two seeds: information, not id
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


def _plain() -> TrainConfig:
    cfg = _cfg(probe_every=0, eval_every=0, eval_batches=1, checkpoint_every=0)
    return TrainConfig(model=cfg.model, task=cfg.task, steps=6, seeds=(0, 1))


def test_the_run_id_is_the_content_id_of_what_the_run_computes(monkeypatch):
    """The id's payload, pinned with a fixed code fingerprint. Update the literal only with a conscious
    STORE_VERSION bump or a new config field (the 2024-26 placements' options, QK-norm, rope_base): a changed id
    recomputes every stored run."""
    monkeypatch.setattr(store, "code_fingerprint", lambda: "0" * 16)
    cfg = _plain()
    config = to_dict(cfg)
    payload = {"config": config, "numerics": {"compute_dtype": None}, "data": "", "code": "0" * 16, "store": 2}
    assert store.config_hash(cfg) == content_id(payload) == "0a78cd8089d67f44"
    monkeypatch.setattr(store, "code_fingerprint", lambda: "1" * 16)  # edited code: a new id
    assert store.config_hash(cfg) != content_id(payload)


def test_how_a_run_is_computed_is_not_in_its_id_but_numerics_are():
    cfg = _plain()
    base = store.config_hash(cfg)
    # execution plans that move numbers by float rounding only share the id
    for plan in (
        default_plan("cpu"),
        default_plan("gpu"),
        ExecutionPlan(unroll_layers=0, remat=True),
        ExecutionPlan(seed_programs="per_seed", streams=2),
    ):
        assert store.config_hash(cfg, numerics=plan.numerics_key()) == base, plan
    # bfloat16 compute moves them beyond float rounding: its own id, through `numerics`
    bf16 = ExecutionPlan(compute_dtype="bfloat16").numerics_key()
    assert bf16 == {"compute_dtype": "bfloat16"}
    assert store.config_hash(cfg, numerics=bf16) != base


def test_hash_changes_with_any_field():
    base = store.config_hash(_cfg())
    for changed in (
        _cfg(steps=7),
        _cfg(seeds=(0, 2)),
        _cfg(optim=OptimConfig(lr=3e-4)),
        _cfg(task=TaskConfig(name="markov", seq_len=16, batch_size=4, data_seed=1)),
        _cfg(probes=("act_grad_norm",)),
    ):
        assert store.config_hash(changed) != base
    assert store.config_hash(_cfg()) == base


@pytest.fixture(scope="module")
def finished_vmapped(tmp_path_factory):
    out = tmp_path_factory.mktemp("store_vmapped")
    return out, train(_cfg(), out, vmap_seeds=True)


def _killed_at_step_2(out, r, tmp_path):
    """A copy of finished run `r` as a kill after its checkpoint at step 2 leaves it: no results, later
    checkpoints unwritten, the partial rows of step 2 (here: a superset), an atomic write's temporary
    file, and started.json saying how its seeds were computed."""
    killed = tmp_path / r.run_id
    shutil.copytree(out / r.run_id, killed)
    for name in ("run.json", "curves.parquet", "probes.parquet"):
        (killed / name).unlink()
    for step in ("4", "6"):
        shutil.rmtree(killed / "checkpoints" / step)
    store.write_partial(killed, r.curves, r.probes, 2)
    (killed / ".curves.parquet.abc123.tmp").write_bytes(b"half a parquet")
    store.write_started(
        killed, {"run_id": r.run_id, "config": to_dict(r.config), "seed_programs": r.info["seed_programs"]}
    )
    return killed


@pytest.mark.parametrize("mode", ["per_seed", "vmapped"])
def test_killed_run_resumes_from_its_checkpoint_with_the_same_numbers(mode, finished, finished_vmapped, tmp_path):
    out, r = finished if mode == "per_seed" else finished_vmapped
    assert r.info["seed_programs"] == mode
    killed = _killed_at_step_2(out, r, tmp_path)
    # the default mode continues the run the way it started (a vmapped run, too, on this CPU), so the
    # resumed numbers are the uninterrupted run's bit for bit
    resumed = train(_cfg(), tmp_path)
    assert resumed.run_id == r.run_id and resumed.info["seed_programs"] == mode
    assert resumed.info["resumed_from"] == 2 and not resumed.skipped
    assert "seed_programs_before_resume" not in resumed.info
    pd.testing.assert_frame_equal(resumed.curves, r.curves, check_exact=True)
    pd.testing.assert_frame_equal(resumed.probes, r.probes, check_exact=True)
    assert not list(killed.rglob("*.tmp")) and not (killed / "partial").exists()


def test_a_run_resumed_the_other_way_agrees_to_rounding_and_says_how_it_started(finished, tmp_path):
    out, r = finished
    _killed_at_step_2(out, r, tmp_path)
    resumed = train(_cfg(), tmp_path, vmap_seeds=True)  # asked for explicitly: the run goes on vmapped
    assert resumed.run_id == r.run_id and resumed.info["resumed_from"] == 2
    assert (resumed.info["seed_programs"], resumed.info["seed_programs_before_resume"]) == ("vmapped", "per_seed")
    for kind in ("curves", "probes"):
        a, b = getattr(resumed, kind), getattr(r, kind)
        pd.testing.assert_frame_equal(a.drop(columns="value"), b.drop(columns="value"))
        np.testing.assert_allclose(a["value"], b["value"], rtol=MODES_RTOL, atol=MODES_ATOL)


def test_a_stored_vmapped_run_is_read_back_by_the_default(finished_vmapped):
    """A store made elsewhere (an accelerator): the CPU default reads the run back, not training it again."""
    out, r = finished_vmapped
    again = train(_cfg(), out)
    assert again.skipped and again.run_id == r.run_id and again.info["seed_programs"] == "vmapped"
    assert [p.name for p in out.iterdir()] == [r.run_id]
    assert set(load_runs(out)["seed_programs"]) == {"vmapped"}


# vmapped seeds against a program per seed: XLA's batched kernels sum in another order, float32 rounding
# that six updates amplify (tests/analysis/train/test_train_loop.py::REORDER_RTOL); no real effect is this small
MODES_RTOL, MODES_ATOL = 1e-4, 1e-6


def test_one_config_is_one_run_whichever_way_its_seeds_are_computed(finished, finished_vmapped):
    """Per-seed programs (the CPU default) and vmapped seeds: one run id, so the second call reads the
    first's result back; and the two modes' numbers agree to float rounding."""
    (out, per_seed), (_, vmapped) = finished, finished_vmapped
    assert per_seed.info["seed_programs"] == "per_seed" and vmapped.info["seed_programs"] == "vmapped"
    assert per_seed.run_id == vmapped.run_id
    before = sorted(p.name for p in out.iterdir())
    again = train(_cfg(), out, vmap_seeds=True)
    assert again.skipped and again.run_id == per_seed.run_id and again.info["seed_programs"] == "per_seed"
    assert sorted(p.name for p in out.iterdir()) == before
    for kind in ("curves", "probes"):
        a, b = getattr(per_seed, kind), getattr(vmapped, kind)
        pd.testing.assert_frame_equal(a.drop(columns="value"), b.drop(columns="value"))
        np.testing.assert_allclose(a["value"], b["value"], rtol=MODES_RTOL, atol=MODES_ATOL)


def test_load_model_gives_the_trained_model(finished):
    out, r = finished
    folder = out / r.run_id
    cfg = r.config
    data = prepare(cfg.task, cfg.model)
    for seed in cfg.seeds:
        model = load_model(folder, seed=seed)  # the latest checkpoint: the final model
        losses = [
            float(loss_from_logits(cfg.model, model(*model_inputs(cfg.model, b)), b))
            for b in (data.batch(data.arrays, val_key(cfg.task.data_seed, i), "val") for i in range(cfg.eval_batches))
        ]
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
