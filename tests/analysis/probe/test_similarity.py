"""Tests for analysis.probe.similarity against float64 numpy references and invariances."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.probe.similarity import (
    linear_cka,
    shuffled_null_cka,
    stack_cka,
    stack_cka_null,
    stack_cosine_adjacent,
    stack_cosine_to_last,
    token_cosine,
)

# float32 CKA vs float64 (or vs a transformed input): observed <= ~1e-6, HSIC terms cancel.
CKA_F32_ATOL = 1e-5
# Same computation in float64: only rounding differences remain.
CKA_F64_ATOL = 1e-10
# float32 cosine of O(1) vectors: a handful of ulps.
COS_ATOL = 1e-6
# Two float32 evaluations of the same quantity by different routes (jit/vmap/loop).
SAME_F32_ATOL = 1e-6
# Smallest change anisotropic scaling must cause; observed changes are > 0.3.
MIN_ANISO_CHANGE = 0.1
# Debiased CKA on independent data, n=512, D=32: null std is ~0.003.
DEBIASED_NULL_BOUND = 0.05
# Biased CKA on independent data, n=64, D=32: observed ~0.33 (min 0.30 over 50 seeds).
BIASED_NULL_FLOOR = 0.1

# Every shape compiles fresh, so property tests draw from this fixed set.
SHAPES = [(64, 8), (96, 16)]
ESTIMATORS = [True, False]
# stack CKA's two evaluation orders: per-pair D×D cross-covariances, or one n×n Gram per layer
METHODS = ["features", "gram"]
PROPERTY = settings(max_examples=10, deadline=None)


def _normal(seed: int, shape: tuple[int, ...], mean: float = 0.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) + mean).astype(np.float32)


def _related(seed: int, n: int, d: int, dy: int | None = None, noise: float = 1.0):
    """x and a noisy linear image of it with a nonzero mean: CKA well inside (0, 1)."""
    rng = np.random.default_rng(seed)
    dy = d if dy is None else dy
    x = rng.standard_normal((n, d)) + 0.5
    y = x @ rng.standard_normal((d, dy)) + noise * rng.standard_normal((n, dy)) - 2.0
    return x.astype(np.float32), y.astype(np.float32)


def _orthogonal(seed: int, d: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


# --- float64 brute-force references (n x n Gram matrices, textbook formulas) ---


def _ref_grams(x, y):
    x = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
    y = np.asarray(y, np.float64).reshape(-1, np.shape(y)[-1])
    return x @ x.T, y @ y.T


def _ref_hsic_biased(k, l):
    n = k.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def _ref_hsic_unbiased(k, l):
    n = k.shape[0]
    kt = k - np.diag(np.diag(k))
    lt = l - np.diag(np.diag(l))
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))


def _ref_cka(x, y, debiased):
    hsic = _ref_hsic_unbiased if debiased else _ref_hsic_biased
    k, l = _ref_grams(x, y)
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


# --- CKA identities and invariances ---


@pytest.mark.parametrize("debiased", ESTIMATORS)
@PROPERTY
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**31 - 1))
def test_cka_self_is_one_and_symmetric(debiased, shape, seed):
    x, y = _related(seed, *shape)
    np.testing.assert_allclose(linear_cka(x, x, debiased), 1.0, atol=SAME_F32_ATOL)
    np.testing.assert_allclose(linear_cka(x, y, debiased), linear_cka(y, x, debiased), atol=SAME_F32_ATOL)


@pytest.mark.parametrize("debiased", ESTIMATORS)
@PROPERTY
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**31 - 1))
def test_cka_orthogonal_and_isotropic_scale_invariance(debiased, shape, seed):
    n, d = shape
    x, y = _related(seed, n, d)
    q = _orthogonal(seed + 1, d)
    base = float(linear_cka(x, y, debiased))
    for xt, yt in [(x @ q, y), (x, y @ q), (3.7 * x, y), (x, 3.7 * y)]:
        np.testing.assert_allclose(linear_cka(xt, yt, debiased), base, atol=CKA_F32_ATOL)


@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_cka_not_invariant_to_anisotropic_scaling(debiased):
    x = _normal(0, (96, 8))
    s = np.logspace(-1, 1, 8).astype(np.float32)
    for a, b in [(x * s, x), (x, x * s)]:
        assert 1.0 - float(linear_cka(a, b, debiased)) > MIN_ANISO_CHANGE


# --- against the brute-force references ---

# (x shape, y shape): feature-space path, the n x n path (n^2 < Dx*Dy), 3-D
# token input, and Dx != Dy.
REF_CASES = [((64, 8), (64, 8)), ((6, 8), (6, 8)), ((2, 5, 16), (2, 5, 16)), ((96, 16), (96, 12)), ((48, 4), (48, 24))]


@pytest.mark.parametrize("debiased", ESTIMATORS)
@pytest.mark.parametrize("xshape,yshape", REF_CASES)
def test_cka_matches_bruteforce_reference(debiased, xshape, yshape):
    rng = np.random.default_rng(sum(xshape) + sum(yshape))
    x = (rng.standard_normal(xshape) + 1.0).astype(np.float32)
    mix = rng.standard_normal((xshape[-1], yshape[-1]))
    y = (x @ mix + rng.standard_normal(yshape) - 3.0).astype(np.float32)
    ref = _ref_cka(x, y, debiased)
    assert 0.05 < abs(ref) < 0.999  # a degenerate value would hide formula errors
    np.testing.assert_allclose(linear_cka(x, y, debiased), ref, atol=CKA_F32_ATOL)
    with jax.enable_x64(True):
        out = linear_cka(jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64), debiased)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, ref, atol=CKA_F64_ATOL)


def test_debiased_near_zero_on_independent_data_biased_not():
    x, y = _normal(1, (512, 32)), _normal(2, (512, 32))
    assert abs(float(linear_cka(x, y, debiased=True))) < DEBIASED_NULL_BOUND
    x, y = _normal(3, (64, 32)), _normal(4, (64, 32))
    assert float(linear_cka(x, y, debiased=False)) > BIASED_NULL_FLOOR


def test_cka_rejects_bad_shapes():
    with pytest.raises(ValueError):
        linear_cka(np.zeros((10, 3)), np.zeros((11, 3)))
    with pytest.raises(ValueError):
        linear_cka(np.ones((3, 3)), np.ones((3, 3)), debiased=True)


# --- shuffled null ---


@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_shuffled_null_much_lower_than_cka(debiased):
    n, d = 256, 16
    x = _normal(5, (n, d))
    y = x @ _normal(6, (d, d))
    key = jax.random.key(0)
    cka = float(linear_cka(x, y, debiased))
    null = float(shuffled_null_cka(x, y, key, debiased))
    assert cka > 0.5 and null < 0.25 * cka
    perm = np.asarray(jax.random.permutation(key, n))
    np.testing.assert_allclose(null, linear_cka(x, y[perm], debiased), atol=SAME_F32_ATOL)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_stack_cka_null_uses_one_permutation(debiased, method):
    h = _stack(7)
    key = jax.random.key(3)
    null = np.asarray(stack_cka_null(h, key, debiased, method))
    loop = [[float(shuffled_null_cka(a, b, key, debiased)) for b in h] for a in h]
    np.testing.assert_allclose(null, loop, atol=SAME_F32_ATOL)
    assert np.all(np.abs(np.diag(null)) < 0.5)  # the unshuffled diagonal would be 1
    other = np.asarray(stack_cka_null(h, jax.random.key(4), debiased, method))
    assert not np.allclose(null, other, atol=1e-3)


# --- cosine ---


def _np_token_cosine(x, y):
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    y = np.asarray(y, np.float64).reshape(-1, y.shape[-1])
    cos = np.sum(x * y, 1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return cos.mean()


def _stack(seed, layers=4, shape=(3, 16, 8)):
    """Residual-stream-like stack: each layer adds an update to the previous one."""
    rng = np.random.default_rng(seed)
    h = [rng.standard_normal(shape)]
    for _ in range(layers - 1):
        h.append(h[-1] + 0.8 * rng.standard_normal(shape))
    return np.stack(h).astype(np.float32)


def test_token_cosine_matches_numpy():
    x = _normal(8, (3, 16, 8))
    y = x + _normal(9, (3, 16, 8))
    np.testing.assert_allclose(token_cosine(x, y), _np_token_cosine(x, y), atol=COS_ATOL)
    np.testing.assert_allclose(token_cosine(x, x), 1.0, atol=COS_ATOL)
    np.testing.assert_allclose(token_cosine(x, -2.0 * x), -1.0, atol=COS_ATOL)


def test_token_cosine_zero_vector_is_finite():
    x = _normal(10, (4, 8))
    y = x.copy()
    y[0] = 0.0
    out = token_cosine(x, y)
    np.testing.assert_allclose(out, 0.75, atol=COS_ATOL)  # rows 1..3 give 1, row 0 gives 0
    grad = jax.grad(token_cosine)(x, y)
    assert np.all(np.isfinite(grad))


def test_stack_cosines_match_loops():
    h = _stack(11)
    adj = [_np_token_cosine(h[l], h[l + 1]) for l in range(len(h) - 1)]
    last = [_np_token_cosine(h[l], h[-1]) for l in range(len(h))]
    np.testing.assert_allclose(stack_cosine_adjacent(h), adj, atol=COS_ATOL)
    np.testing.assert_allclose(stack_cosine_to_last(h), last, atol=COS_ATOL)


# --- stack CKA ---


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_stack_cka_matches_double_loop(debiased, method):
    h = _stack(12)
    out = np.asarray(stack_cka(h, debiased, method))
    loop = [[float(linear_cka(a, b, debiased)) for b in h] for a in h]
    np.testing.assert_allclose(out, loop, atol=SAME_F32_ATOL)
    np.testing.assert_allclose(np.diag(out), 1.0, atol=SAME_F32_ATOL)
    np.testing.assert_allclose(out, out.T, atol=SAME_F32_ATOL)
    assert np.all(out[0, 1:] < 0.99)  # layers do differ, so off-diagonals are informative


# --- jit / vmap ---


@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_jit_and_vmap_match_loop(debiased):
    seeds, n, d = 3, 64, 8
    pairs = [_related(s, n, d) for s in range(seeds)]
    xs = np.stack([p[0] for p in pairs])
    ys = np.stack([p[1] for p in pairs])
    loop = np.array([float(linear_cka(x, y, debiased)) for x, y in pairs])
    cka = jax.jit(jax.vmap(lambda x, y: linear_cka(x, y, debiased)))
    np.testing.assert_allclose(cka(xs, ys), loop, atol=SAME_F32_ATOL)

    keys = jax.random.split(jax.random.key(0), seeds)
    null = jax.jit(jax.vmap(lambda x, y, k: shuffled_null_cka(x, y, k, debiased)))
    null_loop = [float(shuffled_null_cka(x, y, k, debiased)) for (x, y), k in zip(pairs, keys)]
    np.testing.assert_allclose(null(xs, ys, keys), null_loop, atol=SAME_F32_ATOL)

    hs = np.stack([_stack(s) for s in range(seeds)])
    stacked = jax.jit(jax.vmap(lambda h: stack_cka(h, debiased)))(hs)
    np.testing.assert_allclose(stacked, [stack_cka(h, debiased) for h in hs], atol=SAME_F32_ATOL)
    null_stacked = jax.jit(jax.vmap(lambda h, k: stack_cka_null(h, k, debiased)))(hs, keys)
    np.testing.assert_allclose(
        null_stacked, [stack_cka_null(h, k, debiased) for h, k in zip(hs, keys)], atol=SAME_F32_ATOL
    )

    cos = jax.jit(jax.vmap(stack_cosine_adjacent))(hs)
    np.testing.assert_allclose(cos, [stack_cosine_adjacent(h) for h in hs], atol=COS_ATOL)


@pytest.mark.parametrize(
    "layers, shape, expected",
    [
        (12, (8, 64, 64), "features"),  # the report / benchmark shape: n = 512 tokens > D = 64
        (4, (3, 16, 8), "features"),
        (18, (64, 64, 64), "features"),  # n = 4096: Grams would be L·n² = 300M floats
        (12, (4, 64, 256), "gram"),  # n = D = 256: the Gram path was ~16× faster on CPU
        (12, (2, 32, 512), "gram"),  # wide features, few tokens
    ],
)
def test_stack_cka_auto_picks_the_cheaper_path(layers, shape, expected):
    from analysis.probe.similarity import _use_gram

    n, d = shape[0] * shape[1], shape[2]
    assert _use_gram(layers, n, d, "auto") == (expected == "gram")
    with pytest.raises(ValueError, match="method='fast'.*auto.*features.*gram"):
        _use_gram(layers, n, d, "fast")


@pytest.mark.parametrize("debiased", ESTIMATORS)
def test_gram_and_feature_paths_agree_on_a_report_sized_stack(debiased):
    """The shape the probes meet in the report (12 layers, 512 tokens, D = 64), both paths, with
    the null; plus CKA(X, X) = 1 on the diagonal."""
    h = _stack(21, layers=12, shape=(8, 64, 64))
    key = jax.random.key(5)
    gram, feat = (np.asarray(stack_cka(h, debiased, m)) for m in METHODS)
    np.testing.assert_allclose(gram, feat, atol=SAME_F32_ATOL)
    np.testing.assert_allclose(np.diag(gram), 1.0, atol=SAME_F32_ATOL)
    gram_null, feat_null = (np.asarray(stack_cka_null(h, key, debiased, m)) for m in METHODS)
    np.testing.assert_allclose(gram_null, feat_null, atol=SAME_F32_ATOL)
