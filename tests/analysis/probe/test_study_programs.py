"""probe_at_init's programs (analysis.probe.api): one seed per call when seeds are not vmapped.

Why these tests: the study once compiled a loop over each stream's group of seeds; it now compiles
one program of a single seed and calls it once per seed. The loop's numbers are the reference (the
numbers tests and stored studies were made with): the one-seed program must give them bit for bit,
and it must be one program whatever the number of seeds and streams (what spares the compiles).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pandas as pd
import pytest

from analysis.probe import api
from analysis.probe.api import batch_key, probe_at_init, probe_key
from analysis.probe.loss import random_batch
from analysis.probe.probes import CHEAP_PROBES, ProbeConfig, probe_program
from analysis.probe.tidy import to_frame
from models import ModelConfig, init_state
from models.build import build_model

# test_probes.py's SEED_CFG and sizes (Admin: its ω profiling runs inside each seed's program), so
# the one-seed programs are those that file compiles (read back from the persistent cache).
CFG = ModelConfig(arch="decoder", placement="admin", layers=2, d_model=16, heads=2, d_ff=32, vocab=32)
BATCH, LENGTH = 2, 6
SEEDS = [0, 1, 2]
KEYS = ["seed", "stack", "layer", "site", "quantity", "other_layer"]


def _looped_study(cfg: ModelConfig, seeds: list[int]) -> pd.DataFrame:
    """The former program: the seeds of one group computed by a loop (lax.map) in one program."""
    plan = api.study_plan(None)
    ops = plan.model_ops()
    pcfg = ProbeConfig(probes=CHEAP_PROBES)

    def one(seed):
        key = jax.random.key(seed)
        graphdef, state = init_state(cfg, key, ops)
        batch = random_batch(cfg, batch_key(key), BATCH, LENGTH)
        return probe_program(graphdef, state, batch, cfg, pcfg, probe_key(key))

    result = jax.jit(lambda s: jax.lax.map(one, s))(jnp.asarray(seeds, jnp.uint32))
    return to_frame(jax.device_get(result), cfg, seeds)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEYS).reset_index(drop=True)


@pytest.mark.default_codegen
def test_one_seed_programs_give_the_looped_programs_numbers() -> None:
    """Bit for bit under XLA's default code generation (the loop body and the one-seed program are
    compiled apart; under the suite's LLVM -O0 they may differ in a last bit, hence the marker)."""
    study = probe_at_init(CFG, seeds=SEEDS, batch_size=BATCH, seq_len=LENGTH, seed_chunk=1, streams=2)
    assert list(study.drop_duplicates("seed")["seed"]) == SEEDS
    pd.testing.assert_frame_equal(_sorted(study), _sorted(_looped_study(CFG, SEEDS)), check_exact=True)


def test_one_program_whatever_the_seeds_and_streams() -> None:
    """Three seeds on two streams, one seed on one, five on three: one compiled program."""
    plan = api.study_plan(None)
    if plan.seed_programs != "per_seed":
        pytest.skip(f"this backend vmaps seeds ({plan.seed_programs}); the one-seed program is the CPU's")
    api._compiled.cache_clear()
    common = dict(batch_size=BATCH, seq_len=LENGTH, probes=CHEAP_PROBES)
    frames = [
        probe_at_init(CFG, seeds=seeds, streams=streams, **common)
        for seeds, streams in ((SEEDS, 2), ([7], 1), (range(5), 3))
    ]
    assert api._compiled.cache_info().currsize == 1
    program = api._compiled(CFG, plan.replace(streams=None), ProbeConfig(probes=CHEAP_PROBES), BATCH, LENGTH, False, 1)
    assert program._cache_size() == 1
    # the seeds shared out over the streams come back in seed order, and seed 1 is seed 1 in any study
    assert [list(f.drop_duplicates("seed")["seed"]) for f in frames] == [SEEDS, [7], list(range(5))]
    first, third = (f[f.seed == 1].drop(columns="run").reset_index(drop=True) for f in (frames[0], frames[2]))
    pd.testing.assert_frame_equal(first, third, check_exact=True)


@pytest.mark.default_codegen
def test_probe_model_gives_probe_at_init_numbers_bit_for_bit() -> None:
    """probe_model's docstring: a model built by `build_model(cfg, s, ops=plan.model_ops())` and probed
    with seed=s gives probe_at_init's numbers for s exactly, where the init profiles nothing (Pre-LN
    here; Admin's ω profile, computed in build_model's own program, differs in last bits: test_probes
    compares those within rounding). The probe key is an argument of one program per configuration;
    seed 2 at position 1 would show a seed taken for its position."""
    cfg = dataclasses.replace(CFG, placement="pre")
    plan = api.study_plan(None)
    batch = random_batch(cfg, jax.random.key(11), BATCH, LENGTH)
    seeds = [0, 2]
    at_init = probe_at_init(cfg, seeds=seeds, probes=CHEAP_PROBES, batch=batch)
    models = pd.concat(
        [api.probe_model(build_model(cfg, s, ops=plan.model_ops()), batch, CHEAP_PROBES, seed=s) for s in seeds],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(_sorted(models), _sorted(at_init), check_exact=True)
