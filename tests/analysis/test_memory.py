"""The size check before compute (analysis.memory): the closed-form parameter count against the built
models, oversized configs refused in under a second with the estimate and the limit in one line
(`lnscope probe`, `lnscope train`, `train`), and the limit's sources."""

from __future__ import annotations

import resource
import time

import flax.nnx as nnx
import jax
import pytest

from analysis import memory
from analysis.cli import main
from analysis.execution import ExecutionPlan
from analysis.memory import Estimate, TooLarge, check_fits, param_count, probe_estimate, train_estimate
from analysis.probe.registry import probe_memory
from analysis.train import TaskConfig, TrainConfig, train
from models import ModelConfig, build_model

SMALL = dict(layers=2, d_model=16, heads=2, d_ff=32, vocab=32, max_len=32)


@pytest.mark.parametrize(
    "kw",
    [
        dict(arch="decoder", **SMALL),
        dict(arch="encdec", **SMALL),
        dict(arch="encoder", **{**SMALL, "layers": 3, "d_ff": 24}, bias=True, pos="learned", tie_embeddings=True),
    ],
)
def test_param_count_is_the_models(kw):
    cfg = ModelConfig(**kw)
    built = sum(x.size for x in jax.tree.leaves(nnx.state(build_model(cfg, 0), nnx.Param)))
    assert param_count(cfg) == built


@pytest.mark.parametrize("flags", [["--layers", "100000", "--d-model", "32"], ["--layers", "2", "--d-model", "65536"]])
def test_oversized_probe_refused_in_under_a_second(flags, tmp_path, capsys):
    out = tmp_path / "x.parquet"
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        main(["probe", *flags, "--out", str(out)])
    assert time.perf_counter() - start < 1.0
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lnscope: error: lnscope probe needs at least ")
    assert "GB" in err and "parameters" in err and "more than the" in err
    assert not out.exists()


def test_the_similarity_probes_memory_is_counted():
    """A deep stack's probe program is bounded by CKA's (L, L) matrices and the stacked streams the
    similarity probes compare, not by its parameters (the issue's 100000-layer d=32 probe)."""
    cfg = ModelConfig(layers=1000, d_model=16, heads=2, d_ff=32, vocab=32, max_len=32)
    plain = probe_estimate(cfg, 1, 8, 16, probes=probe_memory(("act_norm",)), plan=ExecutionPlan(streams=1))
    cos = probe_estimate(
        cfg, 1, 8, 16, probes=probe_memory(("act_norm", "cos_adjacent")), plan=ExecutionPlan(streams=1)
    )
    cka = probe_estimate(cfg, 1, 8, 16, probes=probe_memory(("act_norm", "cka")), plan=ExecutionPlan(streams=1))
    assert cos.total - plain.total == 2 * 1000 * 8 * 16 * 16 * 4  # resid_pre and resid_post, float32
    assert cka.total - cos.total == 2 * 1000 * 1000 * 4  # CKA and its null
    big = probe_estimate(
        ModelConfig(layers=100000, d_model=32), 4, 8, 32, probes=probe_memory(("cka",)), plan=ExecutionPlan(streams=1)
    )
    assert big.total > 8e10  # far above any machine's memory the suite runs on: refused everywhere


def test_oversized_training_refused_before_the_store_is_touched(tmp_path):
    model = ModelConfig(arch="decoder", layers=2, d_model=65536, heads=4, d_ff=32, vocab=32, max_len=32)
    cfg = TrainConfig(
        model=model, task=TaskConfig(name="markov", seq_len=16, batch_size=4), steps=2, seeds=(0,), probe_every=0
    )
    start = time.perf_counter()
    with pytest.raises(TooLarge, match=r"training needs at least .* GB .*optimizer moments"):
        train(cfg, tmp_path / "runs")
    assert time.perf_counter() - start < 5.0  # no compile (task preparation only)
    assert not (tmp_path / "runs").exists()


def test_check_fits_names_sizes_and_limit():
    estimate = Estimate("probing 2 of 4 seeds at once", (("parameters", 3 << 30), ("activations", 1 << 30)))
    with pytest.raises(TooLarge) as err:
        check_fits(estimate, "lnscope probe", limit=(2 << 30, "the cgroup's memory limit"))
    text = str(err.value)
    assert "4.0 GB" in text and "parameters 3.0 GB" in text and "2.0 GB of the cgroup's memory limit" in text
    check_fits(estimate, "lnscope probe", limit=(5 << 30, "x"))  # fits: no error


def test_estimates_grow_with_what_is_computed_at_once():
    cfg = ModelConfig(arch="decoder", **SMALL)
    one = probe_estimate(cfg, 4, 8, 16, seed_chunk=1, plan=ExecutionPlan(streams=1))
    two = probe_estimate(cfg, 4, 8, 16, seed_chunk=1, plan=ExecutionPlan(streams=2))
    assert two.total == 2 * one.total
    no_grads = probe_estimate(
        cfg, 4, 8, 16, probes=probe_memory(("act_norm",)), seed_chunk=1, plan=ExecutionPlan(streams=1)
    )
    assert dict(no_grads.parts)["gradients"] == 0 < dict(one.parts)["gradients"]
    tcfg = TrainConfig(model=cfg, task=TaskConfig(name="markov", seq_len=16, batch_size=4), seeds=(0, 1, 2))
    parts = dict(train_estimate(tcfg, at_once=1).parts)
    assert parts["optimizer moments"] == 2 * parts["parameters"] == 6 * param_count(cfg) * 4


def test_limit_sees_an_address_space_limit(monkeypatch):
    """`ulimit -v` (RLIMIT_AS) less what is mapped bounds the limit (where the process once hung)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    assert (memory._address_space_room() is None) == (soft == resource.RLIM_INFINITY)
    monkeypatch.setattr(memory.resource, "getrlimit", lambda what: (1 << 50, hard))
    room = memory._address_space_room()
    assert 0 < room < 1 << 50
    assert memory.memory_limit()[0] <= room


def test_compiled_bytes_is_xlas_count():
    compiled = jax.jit(lambda x: (x @ x.T).sum(0)).lower(jax.ShapeDtypeStruct((64, 32), "float32")).compile()
    counted = memory.compiled_bytes(compiled)
    assert counted is None or counted >= 64 * 32 * 4  # at least the argument (None: the backend does not say)
