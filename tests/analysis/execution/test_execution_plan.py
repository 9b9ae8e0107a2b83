"""analysis.execution.plan: the per-backend defaults, validation, the ops a plan gives a model, what
it names as changing the numbers, and the same model under two plans giving the same numbers."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

from analysis.execution import ExecutionPlan, default_plan
from analysis.execution.ops import MixedProjection, PlannedLoop, layout_projection
from analysis.probe.api import probe_at_init
from analysis.train import TrainConfig, store
from models import ModelConfig, ModelOps
from models.ops import plain_projection

SMALL = dict(d_model=16, heads=2, d_ff=32, vocab=32, max_len=16)


def test_default_plan_per_backend():
    cpu, gpu, tpu = (default_plan(b) for b in ("cpu", "gpu", "tpu"))
    assert cpu == ExecutionPlan() and cpu.unroll_layers == 18 and cpu.remat and cpu.cpu_weight_layout
    assert cpu.seed_programs == "per_seed"
    assert gpu == tpu and gpu.unroll_layers == 0 and not gpu.remat and not gpu.cpu_weight_layout
    assert gpu.seed_programs == "vmapped"
    assert cpu.compute_dtype is None and gpu.compute_dtype is None  # numbers do not depend on the backend
    assert default_plan() == default_plan(jax.default_backend())
    with pytest.raises(ValueError, match="unknown backend 'cuda'; valid choices: cpu, gpu, tpu"):
        default_plan("cuda")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"unroll_layers": -1}, "unroll_layers must be an integer >= 0"),
        ({"remat": "yes"}, "remat must be True or False, got 'yes'"),
        ({"compute_dtype": "float16"}, "unknown compute_dtype 'float16'; valid choices: None, bfloat16"),
        ({"seed_programs": "per-seed"}, "unknown seed_programs 'per-seed'; valid choices: vmapped, per_seed"),
        ({"streams": 0}, "streams must be an integer >= 1 or None"),
    ],
)
def test_bad_values_are_named_with_the_valid_ones(change, message):
    with pytest.raises(ValueError, match=message):
        ExecutionPlan().replace(**change)


def test_the_ops_a_plan_gives_a_model():
    cpu, gpu = default_plan("cpu"), default_plan("gpu")
    assert cpu.model_ops() == ModelOps(PlannedLoop(18, barrier=True, remat=True), layout_projection)
    assert gpu.model_ops() == ModelOps(PlannedLoop(0, barrier=True, remat=False), plain_projection)
    assert cpu.one_shot().model_ops().layer_loop == PlannedLoop(0, barrier=True, remat=True)
    assert cpu.replace(compute_dtype="bfloat16").model_ops().projection == MixedProjection("bfloat16", layout=True)
    assert gpu.replace(compute_dtype="bfloat16").model_ops().projection == MixedProjection("bfloat16", layout=False)
    # equal by value, so two builds share a graphdef (and a compiled program)
    assert hash(cpu.model_ops()) == hash(default_plan("cpu").model_ops())


def test_only_the_compute_dtype_changes_the_numbers_and_the_run_id():
    plan = default_plan("cpu")
    others = [plan.replace(unroll_layers=0), plan.replace(remat=False), default_plan("gpu"), plan.replace(streams=3)]
    assert all(p.numerics_key() == plan.numerics_key() == {"compute_dtype": None} for p in others)
    assert plan.replace(compute_dtype="bfloat16").numerics_key() == {"compute_dtype": "bfloat16"}
    cfg = TrainConfig(model=ModelConfig(**SMALL), steps=2)
    assert store.config_hash(cfg, numerics=plan.numerics_key()) == store.config_hash(cfg)
    assert store.config_hash(cfg, numerics={"compute_dtype": "bfloat16"}) != store.config_hash(cfg)


def test_bfloat16_compute_needs_float32_parameters_before_any_compute():
    plan = ExecutionPlan(compute_dtype="bfloat16")
    with pytest.raises(ValueError, match="compute_dtype='bfloat16' needs float32 parameters, got dtype='bfloat16'"):
        probe_at_init(ModelConfig(dtype="bfloat16", **SMALL), seeds=[0], plan=plan)


def _values(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [c for c in frame.columns if c != "value"]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def test_the_same_model_under_the_cpu_and_the_accelerator_plan_gives_the_same_numbers():
    """Unrolled with barriers, seeds one at a time and the CPU weight layout (the CPU's plan, as a
    training step runs) against every stack scanned, seeds vmapped and autodiff's layout (an
    accelerator's plan), on this machine: the same numbers to float32 rounding."""
    cfg = ModelConfig(arch="encdec", placement="admin", layers=2, **SMALL)
    common = dict(seeds=range(3), batch_size=2, seq_len=8, streams=1)
    cpu = _values(probe_at_init(cfg, plan=default_plan("cpu"), **common))
    accelerator = _values(probe_at_init(cfg, plan=default_plan("gpu"), **common))
    keys = [c for c in cpu.columns if c != "value"]
    assert cpu[keys].equals(accelerator[keys]) and len(cpu) > 100
    np.testing.assert_allclose(accelerator["value"], cpu["value"], rtol=2e-4, atol=2e-5)
    # and the seeds' programs alone change nothing beyond rounding either
    per_seed = _values(probe_at_init(cfg, plan=default_plan("gpu").replace(seed_programs="per_seed"), **common))
    np.testing.assert_allclose(per_seed["value"], accelerator["value"], rtol=2e-4, atol=2e-5)
