"""The training loop: smoke runs per arch, divergence as a result, determinism, vmapped seeds against
seeds trained alone, probes measured in the update's own pass, and the expensive-probe cadence.

All runs use one tiny model shape so the persistent compilation cache serves most compiles.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.execution import default_plan
from analysis.train import OptimConfig, TaskConfig, TrainConfig, train
from analysis.train import step as train_step
from analysis.train.loop import Plan
from analysis.train.seeds import choose_mode
from analysis.train.tasks import prepare
from models import ModelConfig

TINY = dict(layers=2, d_model=16, heads=2, d_ff=32, vocab=32, max_len=32)
TASK = TaskConfig(name="markov", seq_len=16, batch_size=4)
# vmap over 2 seeds vs 1 seed, or a probed vs a plain step, changes XLA's fusion and reduction order:
# float32 rounding differences that training amplifies over a few steps, far below any real effect.
REORDER_RTOL = 1e-4


def _cfg(arch="decoder", **kw) -> TrainConfig:
    base = dict(
        model=ModelConfig(arch=arch, **TINY),
        task=TASK,
        steps=6,
        seeds=(0, 1),
        probe_every=3,
        probes=("act_grad_norm", "param_grad_norm"),
        eval_every=3,
        eval_batches=2,
    )
    return TrainConfig(**{**base, **kw})


def _wide(curves: pd.DataFrame) -> pd.DataFrame:
    return curves.pivot_table(index=["quantity", "step"], columns="seed", values="value", dropna=False)


@pytest.mark.parametrize("arch", ["decoder", "encdec", "encoder"])
def test_two_step_smoke_run_per_arch(arch):
    cfg = _cfg(arch, steps=2, probe_every=1, eval_every=1)
    r = train(cfg)
    assert r.status == {0: "finished", 1: "finished"} and r.diverged_step == {0: None, 1: None}
    c = r.curves
    assert set(c["quantity"]) == {"loss", "lr", "grad_norm", "update_ratio", "val_loss"}
    for q in ("loss", "lr", "grad_norm", "update_ratio"):
        assert sorted(c[(c.quantity == q) & (c.seed == 0)]["step"]) == [0, 1]
    assert sorted(c[(c.quantity == "val_loss") & (c.seed == 0)]["step"]) == [0, 1, 2]
    assert np.isfinite(c["value"]).all() and (c[c.quantity == "update_ratio"]["value"] > 0).all()
    assert sorted(r.probes["step"].unique()) == [0, 1, 2]  # every step, and the trained model
    assert set(r.probes["run"]) == {r.run_id}
    # The probe's loss IS the step's loss: one forward/backward serves the update and the probes.
    probe_loss = r.probes[r.probes.quantity == "loss"].set_index(["seed", "step"])["value"]
    curve_loss = c[c.quantity == "loss"].set_index(["seed", "step"])["value"]
    pd.testing.assert_series_equal(probe_loss.loc[curve_loss.index], curve_loss, check_names=False)


def test_huge_learning_rate_diverges_and_keeps_its_rows():
    r = train(_cfg(optim=OptimConfig(lr=10.0), steps=12))
    assert set(r.status.values()) == {"diverged"}
    for seed, step in r.diverged_step.items():
        rows = r.curves[(r.curves.seed == seed) & (r.curves.quantity == "loss")]
        assert rows["step"].max() == step, "rows after the divergence step are dropped"
        assert list(rows["step"]) == list(range(step + 1)), "rows up to it are kept"
        last = rows["value"].iloc[-1]
        assert not np.isfinite(last) or last > r.config.ceiling
        assert (r.probes[r.probes.seed == seed]["step"] <= step).all()
    assert r.info["stopped_early"], "a run whose seeds all diverged stops early"


def test_one_seed_diverges_and_the_other_goes_on():
    reference = train(_cfg(probe_every=0))
    loss = reference.curves[reference.curves.quantity == "loss"].pivot(index="step", columns="seed", values="value")
    good = int(loss.max().idxmin())  # the seed whose worst loss is lower
    bad = 1 - good
    ceiling = float(loss[good].max()) * (1 + 1e-6)  # above every loss of `good`, below some loss of `bad`
    first_bad = int(loss.index[loss[bad] > ceiling][0])
    r = train(_cfg(probe_every=0, loss_ceiling=ceiling))
    assert r.status == {bad: "diverged", good: "finished"} and r.diverged_step[bad] == first_bad
    assert r.curves[(r.curves.seed == good) & (r.curves.quantity == "loss")]["step"].max() == 5
    assert r.curves[r.curves.seed == bad]["step"].max() == first_bad
    kept = r.curves[(r.curves.seed == bad) & (r.curves.quantity == "loss")].set_index("step")["value"]
    np.testing.assert_array_equal(kept.to_numpy(), loss[bad].loc[:first_bad].to_numpy())


def test_same_config_and_seed_is_bitwise_identical():
    a, b = train(_cfg()), train(_cfg())
    pd.testing.assert_frame_equal(a.curves, b.curves, check_exact=True)
    pd.testing.assert_frame_equal(a.probes, b.probes, check_exact=True)


def test_vmapped_seeds_equal_seeds_trained_alone():
    run = train(_cfg(), vmap_seeds=True)
    assert run.info["seed_programs"] == "vmapped"
    together = _wide(run.curves)
    for seed in (0, 1):
        alone = _wide(train(_cfg(seeds=(seed,))).curves)
        np.testing.assert_allclose(alone[seed].to_numpy(), together[seed].to_numpy(), rtol=REORDER_RTOL)


CURVE_KEYS = ["quantity", "step"]
PROBE_KEYS = ["step", "stack", "layer", "site", "quantity", "other_layer"]


def _seed_rows(frame: pd.DataFrame, seed: int, keys: list[str]) -> pd.DataFrame:
    rows = frame[frame.seed == seed].drop(columns="run")
    return rows.sort_values(keys, kind="stable").reset_index(drop=True)


def test_per_seed_programs_are_each_seed_trained_alone_bit_for_bit():
    """The CPU default: a program per seed. A seed's curves and probe rows are then those of the seed
    trained alone, exactly: they do not depend on which seeds ran beside it."""
    run = train(_cfg())
    assert run.info["seed_programs"] == "per_seed"
    for seed in (0, 1):
        alone = train(_cfg(seeds=(seed,)))
        assert alone.info["seed_programs"] == "vmapped"  # one seed: the same program either way
        for kind, keys in (("curves", CURVE_KEYS), ("probes", PROBE_KEYS)):
            pd.testing.assert_frame_equal(
                _seed_rows(getattr(run, kind), seed, keys),
                _seed_rows(getattr(alone, kind), seed, keys),
                check_exact=True,
            )


def test_a_diverged_seed_is_no_longer_computed_and_changes_no_number(monkeypatch):
    """Per seed, a seed the loop knows has diverged is skipped (its state stays frozen, as a call
    would leave it). Every seed's rows are still those of the seed trained alone, bit for bit."""
    import analysis.train.seeds as seeds_module

    long = dict(steps=12, probe_every=2, eval_every=2)
    reference = train(_cfg(seeds=(0, 1, 2, 3), **long))
    loss = reference.curves[reference.curves.quantity == "loss"].pivot(index="step", columns="seed", values="value")
    # a pair where one seed's first loss is above every loss of the other: a ceiling between them
    # makes the first diverge at step 0 while the second finishes
    good, bad = next((g, b) for g in loss.columns for b in loss.columns if loss[b].iloc[0] > loss[g].max())
    cfg = _cfg(seeds=(good, bad), loss_ceiling=float(loss[good].max()) * (1 + 1e-6), **long)
    calls: list[int] = []
    real = seeds_module.run_on_threads
    monkeypatch.setattr(
        seeds_module, "run_on_threads", lambda fn, c, n, post=None: calls.append(len(c)) or real(fn, c, n, post)
    )
    run = train(cfg)
    assert run.status == {good: "finished", bad: "diverged"} and run.diverged_step[bad] == 0
    assert 1 in calls[1:], f"the diverged seed was still computed: seeds per call {calls}"
    monkeypatch.setattr(seeds_module, "run_on_threads", real)
    for seed in (good, bad):
        alone = train(cfg.replace(seeds=(seed,)))
        for kind, keys in (("curves", CURVE_KEYS), ("probes", PROBE_KEYS)):
            pd.testing.assert_frame_equal(
                _seed_rows(getattr(run, kind), seed, keys),
                _seed_rows(getattr(alone, kind), seed, keys),
                check_exact=True,
            )


def test_streams_change_no_number():
    """Per-seed programs on one thread or on two at once: the same executable, the same bits."""
    one, two = train(_cfg(seeds=(0, 1, 2)), streams=1), train(_cfg(seeds=(0, 1, 2)), streams=2)
    assert (one.info["streams"], two.info["streams"]) == (1, 2)
    assert one.run_id == two.run_id
    pd.testing.assert_frame_equal(one.curves, two.curves, check_exact=True)
    pd.testing.assert_frame_equal(one.probes, two.probes, check_exact=True)


def test_the_seed_mode_is_not_part_of_the_run_identity():
    """How the seeds are computed changes numbers by float rounding only: one run, one id
    (tests/analysis/train/test_train_store.py: one folder, the second mode reads the first back)."""
    per_seed, vmapped = train(_cfg(steps=1)), train(_cfg(steps=1), vmap_seeds=True)
    assert (per_seed.info["seed_programs"], vmapped.info["seed_programs"]) == ("per_seed", "vmapped")
    assert per_seed.run_id == vmapped.run_id


def test_configs_that_differ_only_in_runtime_fields_share_one_compiled_program():
    base = _cfg(probe_every=0)
    data = prepare(base.task, base.model)
    plan = default_plan()
    prog = train_step.program(base, data, plan)
    for change in (
        {"optim.lr": 3e-4},
        {"optim.warmup_steps": 2},
        {"seeds": (5, 6, 7)},
        {"steps": 9},
        {"probe_every": 2, "probes": ("act_grad_norm",)},
        {"eval_every": 2, "eval_batches": 3},
        {"loss_ceiling": 5.0},
        {"checkpoint_every": 2},
    ):
        assert train_step.program(base.replace(**change), data, plan) is prog, change
    for change in (
        {"model.d_model": 32, "model.d_ff": 64},
        {"model.layers": 3},
        {"task.seq_len": 8},
        {"task.batch_size": 2},
        {"optim.b1": 0.8},
        {"optim.schedule": "cosine"},
        {"cka_tokens": 8},
    ):
        other = base.replace(**change)
        assert train_step.program(other, prepare(other.task, other.model), plan) is not prog, change
    # the plan's seed programs and streams are the host loop's; its layer loop is the program's
    assert train_step.program(base, data, plan.replace(seed_programs="vmapped", streams=3)) is prog
    assert train_step.program(base, data, plan.replace(unroll_layers=0)) is not prog


def test_a_shared_program_computes_each_configs_own_numbers(monkeypatch):
    """No compiled function reads a runtime field from the config that built the Program: a run through
    a program another config built gives the numbers of a program built for it, bit for bit."""
    monkeypatch.setattr(train_step, "_PROGRAMS", {})
    first = _cfg(probe_every=0, eval_batches=1)
    second = _cfg(optim=OptimConfig(lr=3e-3, warmup_steps=2), seeds=(2, 3), steps=8, eval_every=4, loss_ceiling=50.0)
    assert first.program_key() == second.program_key()
    train(first)
    shared = train(second)
    assert len(train_step._PROGRAMS) == 1
    train_step._PROGRAMS.clear()
    own = train(second)
    pd.testing.assert_frame_equal(shared.curves, own.curves, check_exact=True)
    pd.testing.assert_frame_equal(shared.probes, own.probes, check_exact=True)


def test_choose_mode():
    import jax

    assert choose_mode(2, None, None) == "per_seed"  # this one-device CPU
    assert choose_mode(2, jax.devices(), None) == "vmapped"  # devices given: shard vmapped seeds
    assert choose_mode(2, None, True) == "vmapped" and choose_mode(2, None, False) == "per_seed"
    # one seed runs the same program either way
    assert choose_mode(1, None, False) == choose_mode(1, None, None) == "vmapped"


def test_bad_seed_execution_options_fail_before_any_compute(tmp_path):
    import jax

    with pytest.raises(ValueError, match="vmap_seeds.*'yes'"):
        train(_cfg(), tmp_path, vmap_seeds="yes")
    with pytest.raises(ValueError, match="devices"):
        train(_cfg(), tmp_path, vmap_seeds=False, devices=jax.devices())
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match=f"streams.*{bad!r}"):
            train(_cfg(), tmp_path, streams=bad)
    assert not list(tmp_path.iterdir()), "nothing is written for bad input"


def test_probing_does_not_change_training():
    probed = _wide(train(_cfg(probe_every=1)).curves)
    plain = _wide(train(_cfg(probe_every=0)).curves)
    np.testing.assert_allclose(probed.to_numpy(), plain.to_numpy(), rtol=REORDER_RTOL)


def test_expensive_probes_run_at_their_own_cadence():
    plan = Plan.of(
        _cfg(steps=9, probe_every=2, expensive_probes=("cka",), expensive_probe_every=4), with_checkpoints=False
    )
    cheap = ("act_grad_norm", "param_grad_norm")
    assert plan.probes == {0: (*cheap, "cka"), 2: cheap, 4: (*cheap, "cka"), 6: cheap, 8: (*cheap, "cka"), 9: cheap}
    assert plan.evals == {0, 3, 6, 9} and plan.boundaries == (0, 2, 3, 4, 6, 8, 9)
    # A run stores this schedule (info["probe_steps"]); its probe rows exist only where a probe ran.


def test_probes_recorded_in_the_step_equal_the_probe_program_on_the_same_state(tmp_path):
    """A probe row of a run = `probe_program` run alone on that step's parameters (from the
    checkpoint), that step's batch and that step's probe key: the vmapped, update-fused probe step
    measures what the probe program measures, on the state before the step's update."""
    import flax.nnx as nnx
    import jax

    from analysis.probe.api import probe_key
    from analysis.probe.probes import CHEAP_PROBES, probe_program
    from analysis.probe.tidy import to_frame
    from analysis.train.checkpoint import load_model
    from analysis.train.step import batch_key
    from analysis.train.tasks import prepare

    cfg = _cfg(steps=4, probe_every=2, probes=CHEAP_PROBES, checkpoint_every=2, eval_every=0)
    r = train(cfg, tmp_path)
    data = prepare(cfg.task, cfg.model)
    keys = ["seed", "stack", "layer", "site", "quantity", "other_layer"]
    step = 2
    split = {seed: nnx.split(load_model(r.folder, step=step, seed=seed)) for seed in cfg.seeds}
    graphdef = split[cfg.seeds[0]][0]  # every seed's model has this structure: one compiled program for all
    alone = jax.jit(lambda p, b, k: probe_program(graphdef, p, b, cfg.model, cfg.probe_config(CHEAP_PROBES), k))
    for seed in cfg.seeds:
        params = split[seed][1]
        batch = data.batch(jax.tree.map(jax.numpy.asarray, data.arrays), batch_key(jax.numpy.uint32(seed), step))
        key = jax.random.fold_in(probe_key(jax.random.key(seed)), step)
        result = jax.tree.map(lambda a: np.asarray(a)[None], jax.device_get(alone(params, batch, key)))
        expected = to_frame(result, cfg.model, [seed]).sort_values(keys).reset_index(drop=True)
        recorded = r.probes[(r.probes.seed == seed) & (r.probes.step == step)].sort_values(keys).reset_index(drop=True)
        assert len(expected) > 100 and set(expected.quantity) >= {
            "cka",
            "cka_null",
            "act_grad_norm",
            "ln_jacobian_gain",
        }
        pd.testing.assert_frame_equal(recorded[keys], expected[keys])
        # two programs (vmapped over seeds and fused with the update, or alone): float32 rounding only
        np.testing.assert_allclose(
            recorded["value"], expected["value"], rtol=1e-5, atol=1e-6, err_msg=f"seed {seed}, step {step}"
        )


def test_rerun_removes_scaffolding_a_kill_left_in_a_finished_run(tmp_path):
    """A kill between run.json and the cleanup leaves partial/ and started.json in a finished run; the
    next `train` of that config reads the run back (nothing recomputed) and removes them."""
    cfg = _cfg(steps=2, probe_every=0, eval_every=0)
    first = train(cfg, tmp_path)
    (first.folder / "partial").mkdir()
    (first.folder / "partial" / "curves.parquet").write_bytes(b"left over")
    (first.folder / "started.json").write_text("{}")
    results = {p.name: p.read_bytes() for p in first.folder.iterdir() if p.is_file() and p.name != "started.json"}
    again = train(cfg, tmp_path)
    assert again.skipped
    assert not (first.folder / "partial").exists() and not (first.folder / "started.json").exists()
    assert {p.name: p.read_bytes() for p in first.folder.iterdir() if p.is_file()} == results
    pd.testing.assert_frame_equal(again.curves, first.curves)
