"""CKA at a cost that fits its use: half pairs by symmetry, a token subsample, the null's options,
recorded in the rows; and never an (L, L, n, n) intermediate."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import numpy as np
import pytest

from analysis.probe import similarity
from analysis.probe.loss import random_batch
from analysis.probe.probes import ProbeConfig, cka_sites, probe_program
from analysis.probe.tidy import to_frame
from models import ModelConfig, init_state

# Two float32 evaluations of the same quantity by different routes.
SAME_F32_ATOL = 1e-6
CFG = ModelConfig(arch="decoder", placement="pre", layers=3, d_model=8, heads=2, d_ff=16, vocab=16, max_len=8)
B, T = 4, 8  # n = 32 tokens


def _stack(seed: int, layers: int = 5, n: int = 40, d: int = 6) -> jax.Array:
    base = jax.random.normal(jax.random.key(seed), (n, d))
    noise = jax.random.normal(jax.random.key(seed + 1), (layers, n, d))
    return base[None] + 0.7 * noise  # correlated layers: CKA well away from 0


@pytest.mark.parametrize("method", ["features", "gram"])
def test_half_null_mirrors_the_upper_triangle(method):
    h, key = _stack(0), jax.random.key(3)
    full = np.asarray(similarity.stack_cka_null(h, key, True, method))
    half = np.asarray(similarity.stack_cka_null(h, key, True, method, half=True))
    upper = np.triu(full) + np.triu(full, 1).T
    np.testing.assert_allclose(half, upper, atol=SAME_F32_ATOL)
    # entry (i, j), i > j, is shuffled_null_cka(h[j], h[i]) under the same key
    np.testing.assert_allclose(half[3, 1], float(similarity.shuffled_null_cka(h[1], h[3], key)), atol=SAME_F32_ATOL)


def _intermediate_shapes(fn, *args) -> list[tuple[int, ...]]:
    shapes = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            shapes.extend(tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape"))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (list, tuple)) else (value,):
                    if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                        walk(getattr(sub, "jaxpr", sub))

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return shapes


@pytest.mark.parametrize("method", ["features", "gram"])
def test_no_pairwise_token_by_token_intermediate(method):
    # (L, L, n, n) would be L²·n² floats (18 layers, 512 tokens: 340 MB); no path may form it, nor
    # anything with two token axes beyond one n×n Gram per layer.
    layers, n = 5, 40
    h, key = _stack(1, layers, n), jax.random.key(0)
    for fn in (
        lambda h: similarity.stack_cka(h, True, method),
        lambda h: similarity.stack_cka_null(h, key, True, method),
        lambda h: similarity.stack_cka_null(h, key, True, method, half=True),
    ):
        for shape in _intermediate_shapes(fn, h):
            assert shape.count(n) < 2 or int(np.prod(shape)) <= layers * n * n, (method, shape)


def _run(pcfg: ProbeConfig):
    graphdef, state = init_state(CFG, 0)
    batch = random_batch(CFG, jax.random.key(1), B, T)
    key = jax.random.key(2)
    fn = jax.jit(
        lambda s, b: (probe_program(graphdef, s, b, CFG, pcfg, key), nnx.merge(graphdef, s).forward(b["tokens"]).sites)
    )
    result, sites = fn(state, batch)
    return result, sites["decoder"]["layers"]["resid_post"], jax.random.fold_in(key, 1)


def test_token_subsample_and_half_null_are_recorded_in_the_rows():
    pcfg = ProbeConfig(probes=("cka",), cka_tokens=16, cka_null="half")
    result, h, cka_key = _run(pcfg)
    site, null_site = cka_sites(pcfg, B * T)
    assert (site, null_site) == ("resid_post@16tok", "resid_post@16tok/half")
    # the same 16 tokens, drawn as documented, through the public similarity functions
    flat = h.reshape(CFG.layers, B * T, CFG.d_model)
    idx = jax.random.choice(jax.random.fold_in(cka_key, 1), B * T, (16,), replace=False)
    assert len(set(np.asarray(idx).tolist())) == 16
    np.testing.assert_allclose(
        result["cka"]["decoder"]["layers"][site], similarity.stack_cka(flat[:, idx]), atol=SAME_F32_ATOL
    )
    np.testing.assert_allclose(
        result["cka_null"]["decoder"]["layers"][null_site],
        similarity.stack_cka_null(flat[:, idx], cka_key, half=True),
        atol=SAME_F32_ATOL,
    )
    df = to_frame(jax.tree.map(lambda a: np.asarray(a)[None], result), CFG, [0])
    assert set(df.loc[df["quantity"] == "cka", "site"]) == {site}
    assert set(df.loc[df["quantity"] == "cka_null", "site"]) == {null_site}
    assert len(df[df["quantity"] == "cka"]) == CFG.layers**2


def test_defaults_use_every_token_and_the_null_can_be_off():
    assert cka_sites(ProbeConfig(), 512) == ("resid_post", "resid_post")
    assert cka_sites(ProbeConfig(cka_tokens=512), 512) == ("resid_post", "resid_post")  # no subsample
    result, _, _ = _run(ProbeConfig(probes=("cka",), cka_null="off"))
    assert "cka_null" not in result and "resid_post" in result["cka"]["decoder"]["layers"]


@pytest.mark.parametrize("bad", [dict(cka_tokens=2), dict(cka_tokens=1.5), dict(cka_null="quarter")])
def test_bad_cka_options_are_clear_errors(bad):
    with pytest.raises(ValueError, match="cka_"):
        ProbeConfig(**bad)


def test_deep_stacks_take_pairs_row_by_row(monkeypatch):
    # Above _CROSS_MAX_FLOATS the (L·D)² all-pairs cross-covariance is never formed: one row of
    # pairs at a time (lax.map), same numbers; above _SLAB_MAX_LAYERS the symmetric path uses it too.
    h = _stack(5, layers=70, n=24, d=3)
    full = np.asarray(similarity._cross_traces(h, h, upper=False))
    monkeypatch.setattr(similarity, "_CROSS_MAX_FLOATS", 10)
    for upper in (False, True):
        rows = np.asarray(similarity._cross_traces(h, h, upper=upper))
        expected = np.triu(full) if upper else full
        np.testing.assert_allclose(rows, expected, rtol=1e-5)
