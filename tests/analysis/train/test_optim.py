"""Schedules against their equations written out by hand, and the optimizer against a float64 AdamW
(with clipping) restated in numpy."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.train import SCHEDULES, OptimConfig
from analysis.train.optim import Hyper, adamw_updates, learning_rate, make_optimizer

# float32 optimizer arithmetic against a float64 restatement over three steps.
ADAM_RTOL = 1e-5
# Schedules run in float32: relative 1e-6 of the value, and 1e-6 of the peak near cosine's zero.
SCHEDULE_RTOL, SCHEDULE_ATOL_OF_PEAK = 1e-6, 1e-6


def _hand(schedule: str, s: int, lr: float, w: int, total: int) -> float:
    if schedule != "constant" and s < w or schedule == "constant" and w and s < w:
        return lr * (s + 1) / w
    if schedule == "constant":
        return lr
    if schedule == "inverse_sqrt":
        return lr * math.sqrt(w / (s + 1))
    return lr * 0.5 * (1 + math.cos(math.pi * (s - w) / (total - w)))


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("warmup", [0, 1, 10])
def test_schedules_match_their_equations(schedule, warmup):
    if schedule == "inverse_sqrt" and warmup == 0:
        pytest.skip("inverse_sqrt needs a warm-up (a config error, tested in test_config)")
    o = OptimConfig(lr=2e-3, schedule=schedule, warmup_steps=warmup)
    total = 50
    got = np.asarray(learning_rate(jnp.arange(total), o, total))
    want = np.array([_hand(schedule, s, 2e-3, warmup, total) for s in range(total)])
    np.testing.assert_allclose(got, want, rtol=SCHEDULE_RTOL, atol=SCHEDULE_ATOL_OF_PEAK * 2e-3)
    if warmup:
        assert got[warmup - 1] == pytest.approx(2e-3)  # the warm-up ends at the peak


def _adamw_reference(params, grads_seq, o: OptimConfig, total: int):
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    for t, grads in enumerate(grads_seq, start=1):
        g = {k: x.astype(np.float64) for k, x in grads.items()}
        if o.clip_norm is not None:
            norm = math.sqrt(sum(float((x**2).sum()) for x in g.values()))
            g = {k: x * min(1.0, o.clip_norm / norm) for k, x in g.items()}
        lr = _hand(o.schedule, t - 1, o.lr, o.warmup_steps, total)
        for k in p:
            m[k] = o.b1 * m[k] + (1 - o.b1) * g[k]
            v2[k] = o.b2 * v2[k] + (1 - o.b2) * g[k] ** 2
            mhat, vhat = m[k] / (1 - o.b1**t), v2[k] / (1 - o.b2**t)
            p[k] = p[k] - lr * (mhat / (np.sqrt(vhat) + o.eps) + o.weight_decay * p[k])
    return p


@pytest.mark.parametrize("clip", [None, 0.5])
def test_adamw_matches_a_float64_restatement(clip):
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 3)).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    grads_seq = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in range(3)]
    o = OptimConfig(lr=1e-2, schedule="inverse_sqrt", warmup_steps=2, weight_decay=0.1, clip_norm=clip)
    opt = make_optimizer(o)
    with jax.numpy_dtype_promotion("standard"):
        state = opt.init(jax.tree.map(jnp.asarray, params))
    p = jax.tree.map(jnp.asarray, params)
    step = jax.jit(lambda t, g, s, p: adamw_updates(opt, o.schedule, Hyper.of(o, 10), t, g, s, p)[:2])
    for t, g in enumerate(grads_seq):
        updates, state = step(t, jax.tree.map(jnp.asarray, g), state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
    want = _adamw_reference(params, grads_seq, o, 10)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=ADAM_RTOL, atol=1e-7)
