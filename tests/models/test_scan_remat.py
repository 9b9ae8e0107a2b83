"""Scanned layers that recompute their forward in the backward (`ModelConfig.scan_remat`) compute
what scanned layers that save their intermediates compute.

Values and gradients (every parameter, every probe site through zero perturbations) for Mix-LN's two
segments, ResiDual's dual stream and the encoder-decoder with cross-attention; forward-over-reverse
(the Hessian probe's path); every init-time probe in float64; the switch itself (which stacks
recompute, its CPU default) and its bad values.
"""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.probe.api import probe_at_init
from models import ModelConfig, Transformer, build_model
from models.stack import scan_remat
from tests.models.test_invariants import TOKENS, build_eager, cfg_of, inputs_of, jit_apply, jitter
from tests.models.test_unroll import CASES, _value_and_grads, assert_pairs_equal

SCAN = 0  # unroll_layers: always scan


def _grad_jaxpr_text(cfg: ModelConfig) -> str:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
    loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(*inputs_of(cfg)))
    return str(jax.make_jaxpr(jax.grad(loss))(state))


def test_recomputed_scan_equals_saved_scan_values_and_gradients():
    models, cfgs, labels = [], [], []
    for placement, arch in CASES:
        # mix at 4 layers: a Post-LN and a Pre-LN segment of 2 layers each
        cfg = cfg_of(placement, arch=arch, layers=4 if placement == "mix" else 2, unroll_layers=SCAN, scan_remat=False)
        saved = jitter(build_eager(cfg))
        remat_cfg = cfg.replace(scan_remat=True)
        remat_graphdef = nnx.split(nnx.eval_shape(lambda c=remat_cfg: Transformer(c, nnx.Rngs(0))))[0]
        recomputed = nnx.merge(remat_graphdef, nnx.state(saved))  # the same parameters
        assert all(s.remat for s in recomputed.stacks.values())
        assert not any(s.remat for s in saved.stacks.values())
        models += [saved, recomputed]
        cfgs += [cfg, remat_cfg]
        labels += [f"{placement}/{arch}/saved", f"{placement}/{arch}/recomputed"]
    results = jit_apply(models, lambda m, i, t: _value_and_grads(m, t, cfgs[i]), TOKENS, labels=labels)
    assert_pairs_equal(CASES, results)


def test_forward_over_reverse_goes_through_recomputed_layers():
    # The Hessian probe's Hessian-vector products differentiate the gradient forward (jvp of grad).
    hvps = []
    for remat in (False, True):
        cfg = cfg_of("post", layers=3, unroll_layers=SCAN, scan_remat=remat)
        graphdef, state = nnx.split(jitter(build_eager(cfg)))
        loss = lambda s: jnp.sum(jnp.tanh(nnx.merge(graphdef, s)(*inputs_of(cfg))))
        direction = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), state)
        hvps.append(jax.jit(lambda s, d: jax.jvp(jax.grad(loss), (s,), (d,))[1])(state, direction))
    for a, b in zip(jax.tree.leaves(hvps[0]), jax.tree.leaves(hvps[1])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_every_init_probe_is_unchanged_by_recomputation():
    # float64, so that the tolerance sees a wrong recomputation and not float32 rounding: CKA and its
    # null, site-gradient taps (scanned stacks), LN Jacobian gains, in-layer summaries, cosines.
    frames = []
    with jax.enable_x64(True):
        for remat in (False, True):
            cfg = ModelConfig(placement="post", layers=3, d_model=16, heads=2, d_ff=32, vocab=32, max_len=16,
                              dtype="float64", unroll_layers=SCAN, scan_remat=remat)  # fmt: skip
            frames.append(probe_at_init(cfg, seeds=range(2), batch_size=2, seq_len=8))
    saved, recomputed = frames
    keys = [c for c in saved.columns if c != "value"]
    assert saved[keys].equals(recomputed[keys])
    np.testing.assert_allclose(recomputed["value"].to_numpy(), saved["value"].to_numpy(), rtol=1e-12, atol=1e-14)


def test_only_scanned_stacks_recompute_and_the_default_follows_the_backend():
    assert scan_remat(None) == (jax.default_backend() == "cpu")
    assert scan_remat(True) and not scan_remat(False)
    for remat in (None, True, False):
        scanned = build_model(cfg_of("pre", layers=2, unroll_layers=SCAN, scan_remat=remat), seed=0)
        unrolled = build_model(cfg_of("pre", layers=2, unroll_layers=2, scan_remat=remat), seed=0)
        assert scanned.stacks["decoder"].remat == scan_remat(remat)
        assert not unrolled.stacks["decoder"].remat
    # and the compiled program holds the recomputation exactly when asked for
    assert "remat" in _grad_jaxpr_text(cfg_of("pre", layers=2, unroll_layers=SCAN, scan_remat=True))
    assert "remat" not in _grad_jaxpr_text(cfg_of("pre", layers=2, unroll_layers=SCAN, scan_remat=False))


@pytest.mark.parametrize("bad", ["yes", 1, 0.0])
def test_bad_scan_remat_is_named(bad):
    with pytest.raises(ValueError, match=r"scan_remat must be None .*True or False, got"):
        cfg_of("pre", scan_remat=bad)
