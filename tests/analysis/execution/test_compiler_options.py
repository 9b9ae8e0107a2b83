"""The CPU plan's XLA compile options (analysis.execution.plan.CPU_COMPILER_OPTIONS) spare compile work
and change no bit: a study and a short training run give exactly the numbers of the same plan without
them. Exact bits hold under XLA's default code generation only (`default_codegen`: `make test` runs
these without the suite's -O0 flag); the plumbing tests run in either pass."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

import analysis.execution.plan as plan_module
from analysis.execution import ExecutionPlan, default_plan
from analysis.execution.plan import CPU_COMPILER_OPTIONS
from analysis.probe.api import probe_at_init
from analysis.train import TaskConfig, TrainConfig, train
from models import ModelConfig

TINY = dict(layers=2, d_model=16, heads=2, d_ff=32, vocab=32, max_len=32)


def _pair(plan: ExecutionPlan) -> tuple[ExecutionPlan, ExecutionPlan]:
    assert plan.compiler_options() == dict(CPU_COMPILER_OPTIONS) and CPU_COMPILER_OPTIONS  # something to compare
    return plan, plan.replace(cpu_compiler_options=False)


@pytest.mark.default_codegen
def test_a_study_keeps_every_bit_without_the_options():
    cfg = ModelConfig(arch="decoder", **TINY)
    probes = ("act_norm", "act_grad_norm")  # the forward and the backward pass
    with_options, without = _pair(default_plan("cpu").one_shot())
    frames = [
        probe_at_init(cfg, seeds=range(2), batch_size=2, seq_len=8, probes=probes, plan=plan, streams=1)
        for plan in (with_options, without)
    ]
    assert len(frames[0]) > 0 and frames[0].equals(frames[1])


@pytest.mark.default_codegen
def test_a_training_run_keeps_every_bit_without_the_options():
    cfg = TrainConfig(
        model=ModelConfig(arch="decoder", **TINY),
        task=TaskConfig(name="markov", seq_len=8, batch_size=2),
        steps=2,
        seeds=(0,),
        probes=(),  # the plain step (a probed one is the study's program inside a step)
        eval_every=0,
        eval_batches=1,
    )
    with_options, without = _pair(default_plan("cpu"))
    runs = [train(cfg, plan=plan) for plan in (with_options, without)]
    assert len(runs[0].curves) > 0 and runs[0].curves.equals(runs[1].curves)


def test_the_plan_hands_its_options_to_xla(monkeypatch):
    x = jnp.ones(3)
    assert float(ExecutionPlan().jit(lambda v: v * 2)(x).sum()) == 6.0
    monkeypatch.setattr(plan_module, "CPU_COMPILER_OPTIONS", (("xla_no_such_option", True),))
    with pytest.raises(Exception, match="xla_no_such_option"):  # XLA itself refuses the unknown name
        ExecutionPlan().jit(lambda v: v * 3)(x)
    assert float(ExecutionPlan(cpu_compiler_options=False).jit(lambda v: v * 4)(x).sum()) == 12.0


def test_accelerator_plans_use_xlas_own_options():
    assert not default_plan("gpu").cpu_compiler_options and default_plan("gpu").compiler_options() is None
    assert not default_plan("tpu").cpu_compiler_options and default_plan("cpu").cpu_compiler_options


def test_a_bad_value_is_named():
    with pytest.raises(ValueError, match="cpu_compiler_options must be True or False, got 'yes'"):
        ExecutionPlan(cpu_compiler_options="yes")
