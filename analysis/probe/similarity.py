"""Representation-similarity measures: token cosine and linear CKA.

Every function treats the last axis of its inputs as the feature axis and all
leading axes as examples, so (B, T, D) token activations count as n = B*T
examples of dimension D. Everything is pure ``jax.numpy`` with control flow
decided only by static shapes, so the functions can be wrapped in ``jax.jit``
and ``jax.vmap``. The public functions are themselves jitted (``debiased`` is
static) so that eager calls in analysis loops compile once per shape instead
of dispatching op by op; inside an outer jit they are simply inlined.

Precision: work is done in the (inexact-promoted) input dtype. The HSIC terms
of CKA are differences of large sums; centring and normalising the features
first keeps float32 within ~1e-7 of a float64 evaluation (checked up to
n = 4096, D = 1024 on CPU), but bfloat16/float16 inputs should be upcast by
the caller. Matmuls request ``Precision.HIGHEST`` because the default on
GPU/TPU may use TF32/bfloat16 passes, which are too coarse for those
cancellations.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "token_cosine",
    "stack_cosine_adjacent",
    "stack_cosine_to_last",
    "linear_cka",
    "stack_cka",
    "shuffled_null_cka",
    "stack_cka_null",
]

_HIGHEST = lax.Precision.HIGHEST


def _examples(x: jax.Array) -> jax.Array:
    """(..., D) -> (n, D) in an inexact dtype."""
    x = jnp.asarray(x)
    x = x.astype(jnp.result_type(x.dtype, float))
    return x.reshape(-1, x.shape[-1])


@jax.jit
def token_cosine(x: jax.Array, y: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Mean per-position cosine similarity.

    cos_i = <x_i, y_i> / max(||x_i|| ||y_i||, eps), averaged over every leading
    position i. A zero vector gives cosine 0 rather than NaN.

    Args:
        x: (..., D) activations.
        y: (..., D) activations, same shape as ``x``.
        eps: floor on the norm product.

    Returns:
        Scalar mean cosine similarity.
    """
    x, y = _examples(x), _examples(y)
    dot = jnp.sum(x * y, axis=-1)
    sq = jnp.sum(x * x, axis=-1) * jnp.sum(y * y, axis=-1)
    # Flooring the squared product before the sqrt keeps gradients finite at 0.
    return jnp.mean(dot / jnp.sqrt(jnp.maximum(sq, eps * eps)))


@jax.jit
def stack_cosine_adjacent(h: jax.Array) -> jax.Array:
    """Token cosine between consecutive layers.

    Args:
        h: (L, ..., D) stacked layer representations.

    Returns:
        (L-1,) array; entry l = token_cosine(h[l], h[l+1]).
    """
    return jax.vmap(token_cosine)(h[:-1], h[1:])


@jax.jit
def stack_cosine_to_last(h: jax.Array) -> jax.Array:
    """Token cosine between every layer and the last one.

    Args:
        h: (L, ..., D) stacked layer representations.

    Returns:
        (L,) array; entry l = token_cosine(h[l], h[-1]).
    """
    return jax.vmap(token_cosine, in_axes=(0, None))(h, h[-1])


def _prepare(x: jax.Array) -> jax.Array:
    """(n, D) -> column-centred, unit-Frobenius-norm copy.

    Both linear-CKA estimators are invariant to feature mean shifts and to
    isotropic scaling, so this changes no result; it removes the large common
    components whose cancellation costs precision and bounds the magnitudes so
    big activations cannot overflow. A constant input stays zero (CKA = NaN).
    """
    xc = x - jnp.mean(x, axis=0, keepdims=True)
    norm = jnp.sqrt(jnp.sum(xc * xc))
    return xc / jnp.where(norm > 0, norm, 1)


def _gram_inner(x: jax.Array, y: jax.Array) -> jax.Array:
    """tr(K L) = ||Xᵀ Y||_F² for K = X Xᵀ, L = Y Yᵀ, X (n, Dx), Y (n, Dy).

    Chooses on static shapes whichever intermediate is smaller: the Dx×Dy
    cross-covariance, or the two n×n Gram matrices when n² < Dx·Dy.
    """
    n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
    if n * n < dx * dy:
        k = jnp.matmul(x, x.T, precision=_HIGHEST)
        l = jnp.matmul(y, y.T, precision=_HIGHEST)
        return jnp.sum(k * l)
    c = jnp.matmul(x.T, y, precision=_HIGHEST)
    return jnp.sum(c * c)


def _hsic(x: jax.Array, y: jax.Array, debiased: bool) -> jax.Array:
    """HSIC with linear kernels of prepared (n, Dx), (n, Dy) examples.

    Biased (Gretton et al. 2005): HSIC_0 = tr(K H L H) / (n-1)², which for
    centred columns is ||Xᵀ Y||_F² / (n-1)².

    Debiased (Song et al. 2012, "Feature Selection via Dependence Maximization"),
    with K̃, L̃ the Gram matrices with zeroed diagonals:
        HSIC_1 = [tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n-1)(n-2)) − 2/(n-2) · 1ᵀK̃L̃1]
                 / (n(n-3)).
    Every term is evaluated without forming K̃ or L̃, using a = diag K,
    b = diag L: tr(K̃L̃) = tr(KL) − a·b, 1ᵀK̃1 = ||Xᵀ1||² − Σa and
    K̃1 = X(Xᵀ1) − a.
    """
    n = x.shape[0]
    cross = _gram_inner(x, y)
    if not debiased:
        return cross / (n - 1) ** 2
    a = jnp.sum(x * x, axis=1)
    b = jnp.sum(y * y, axis=1)
    # Columns are centred, so Xᵀ1 is ~0; keeping it makes this the exact
    # estimator on whatever the rounding left behind.
    sx, sy = jnp.sum(x, axis=0), jnp.sum(y, axis=0)
    k1 = jnp.matmul(x, sx, precision=_HIGHEST) - a
    l1 = jnp.matmul(y, sy, precision=_HIGHEST) - b
    trace = cross - jnp.dot(a, b)
    sums = (jnp.sum(sx * sx) - jnp.sum(a)) * (jnp.sum(sy * sy) - jnp.sum(b))
    total = trace + sums / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * jnp.dot(k1, l1)
    return total / (n * (n - 3))


def _check_n(n: int, debiased: bool) -> None:
    need = 4 if debiased else 2
    if n < need:
        kind = "debiased" if debiased else "biased"
        raise ValueError(f"{kind} linear CKA needs n >= {need} examples, got {n}")


def _flatten_stack(h: jax.Array) -> jax.Array:
    """(L, ..., D) -> (L, n, D) in an inexact dtype."""
    h = jnp.asarray(h)
    h = h.astype(jnp.result_type(h.dtype, float))
    return h.reshape(h.shape[0], -1, h.shape[-1])


@partial(jax.jit, static_argnames="debiased")
def linear_cka(x: jax.Array, y: jax.Array, debiased: bool = True) -> jax.Array:
    """Linear centred kernel alignment (Kornblith et al. 2019).

    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = X Xᵀ, L = Y Yᵀ
    ("Similarity of Neural Network Representations Revisited", ICML 2019).
    The debiased variant uses the unbiased HSIC estimator of Song et al. 2012,
    as in Nguyen, Raghu & Kornblith 2021 ("Do Wide and Deep Networks Learn the
    Same Things?"); it reads ≈ 0 on independent data, whereas the biased one is
    inflated when D is not small relative to n. It is not clipped and can be
    slightly negative. Memory is O(n·D + D²) (n×n only when that is smaller).

    Args:
        x: (..., Dx) activations, flattened to (n, Dx).
        y: (..., Dy) activations with the same leading shape, flattened to
            (n, Dy).
        debiased: use the unbiased HSIC estimator (needs n >= 4).

    Returns:
        Scalar CKA; invariant to orthogonal transforms and isotropic scaling of
        either argument. NaN if either input is constant over examples.

    Raises:
        ValueError: if the leading shapes differ or n is too small.
    """
    if jnp.shape(x)[:-1] != jnp.shape(y)[:-1]:
        raise ValueError(f"leading shapes differ: {jnp.shape(x)[:-1]} vs {jnp.shape(y)[:-1]}")
    x, y = _prepare(_examples(x)), _prepare(_examples(y))
    _check_n(x.shape[0], debiased)
    xy = _hsic(x, y, debiased)
    return xy / jnp.sqrt(_hsic(x, x, debiased) * _hsic(y, y, debiased))


STACK_METHODS = ("auto", "features", "gram")


# Up to this many layers the symmetric feature path computes its L(L+1)/2 pairs as L slab matmuls
# (an unrolled loop: program size grows with L); deeper stacks use one L·D × L·D matmul (all pairs).
_SLAB_MAX_LAYERS = 64
# All pairs' D×D cross-covariances at once hold (L·D)² floats; above this (256 MiB) row by row.
_CROSS_MAX_FLOATS = 2**26


def _cross_traces(hx: jax.Array, hy: jax.Array, upper: bool) -> jax.Array:
    """(L, L) matrix of ‖hx[i]ᵀ hy[j]‖_F² (D×D cross-covariances, never n×n).

    `upper`: only pairs i <= j are computed (as L matmuls of hx[i] against the slab hy[i:], half the
    work); the rest of the matrix is left zero. Otherwise every pair, in one matmul.
    """
    layers, n, d = hx.shape
    flat_y = jnp.transpose(hy, (1, 0, 2)).reshape(n, layers * d)  # (n, L·D): layer j in columns j·D..
    if not upper or layers > _SLAB_MAX_LAYERS:
        if (layers * d) ** 2 <= _CROSS_MAX_FLOATS:  # every pair in one (D·L, n)·(n, L·D) matmul
            c = jnp.matmul(jnp.transpose(hx, (2, 0, 1)).reshape(-1, n), flat_y, precision=_HIGHEST)
            sq = jnp.sum(jnp.square(c).reshape(d, layers * layers * d), axis=0)
            full = jnp.sum(sq.reshape(layers, layers, d), axis=2)
        else:  # deep stacks: one row of pairs at a time, memory L·D² instead of (L·D)²
            row = lambda x: jnp.sum(
                jnp.sum(jnp.square(jnp.matmul(x.T, flat_y, precision=_HIGHEST)), axis=0).reshape(layers, d), axis=1
            )
            full = jax.lax.map(row, hx)
        return jnp.triu(full) if upper else full
    rows = []
    for i in range(layers):
        c = jnp.matmul(hx[i].T, flat_y[:, i * d :], precision=_HIGHEST)  # (D, (L - i)·D)
        per_pair = jnp.sum(jnp.sum(jnp.square(c), axis=0).reshape(layers - i, d), axis=1)
        rows.append(jnp.concatenate([jnp.zeros((i,), c.dtype), per_pair]))
    return jnp.stack(rows)


def _pairwise_hsic(hx: jax.Array, hy: jax.Array, debiased: bool, upper: bool = False) -> jax.Array:
    """(L, L) HSIC of hx[i] against hy[j] for prepared (L, n, D) stacks: `_hsic`'s formulas with the
    per-pair vectors (row norms a, b; K̃1, L̃1; totals) turned into (L, n) matrices whose products
    give every pair's correction at once. `upper`: only i <= j (the rest is zero)."""
    n = hx.shape[1]
    cross = _cross_traces(hx, hy, upper)
    if not debiased:
        return cross / (n - 1) ** 2
    dot = lambda u, v: jnp.matmul(u, v.T, precision=_HIGHEST)  # (L, n) x (L, n) -> (L, L)
    a, b = jnp.sum(hx * hx, axis=2), jnp.sum(hy * hy, axis=2)  # diag K, diag L: (L, n)
    sx, sy = jnp.sum(hx, axis=1), jnp.sum(hy, axis=1)  # Xᵀ1: (L, D)
    k1 = jnp.einsum("lnd,ld->ln", hx, sx, precision=_HIGHEST) - a  # K̃1
    l1 = jnp.einsum("lnd,ld->ln", hy, sy, precision=_HIGHEST) - b
    tx = jnp.sum(sx * sx, axis=1) - jnp.sum(a, axis=1)  # 1ᵀK̃1: (L,)
    ty = jnp.sum(sy * sy, axis=1) - jnp.sum(b, axis=1)
    total = cross - dot(a, b) + jnp.outer(tx, ty) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * dot(k1, l1)
    total = total / (n * (n - 3))
    return jnp.triu(total) if upper else total


def _pairwise_cka(hx: jax.Array, hy: jax.Array, debiased: bool, symmetric: bool = False) -> jax.Array:
    """(L, n, D) prepared stacks -> (L, L) CKA of hx[i] against hy[j].

    `symmetric`: entry (j, i) is taken to be entry (i, j) (exact when hy is hx, since CKA(a, b) =
    CKA(b, a)), so only the L(L+1)/2 pairs i <= j are computed: half the work. Nothing of shape
    (L, L, n, n) is formed: the pairs meet through D×D cross-covariances.
    """
    cross = _pairwise_hsic(hx, hy, debiased, upper=symmetric)
    if symmetric:
        cross = cross + jnp.triu(cross, 1).T
    # Self-HSIC is invariant to a row permutation, so the unpermuted stack
    # supplies the normaliser for both arguments.
    self_hsic = jax.vmap(lambda a: _hsic(a, a, debiased))(hx)
    return cross / jnp.sqrt(self_hsic[:, None] * self_hsic[None, :])


def _gram_terms(h: jax.Array, debiased: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per layer of a prepared (L, n, D) stack: the Gram matrices flattened to (L, n²), with
    zeroed diagonals when debiased, their row sums (L, n) and their totals (L,)."""
    k = jnp.einsum("lnd,lmd->lnm", h, h, precision=_HIGHEST)
    if debiased:
        k = k * (1.0 - jnp.eye(k.shape[1], dtype=k.dtype))
    rows = jnp.sum(k, axis=2)
    return k.reshape(k.shape[0], -1), rows, jnp.sum(rows, axis=1)


def _hsic_from_grams(x_terms, y_terms, n: int, debiased: bool, pairwise: bool = True) -> jax.Array:
    """HSIC from `_gram_terms` of two stacks (the formulas of `_hsic`): (L, L) for every pair, or
    (L,) for layer i against layer i when not `pairwise`."""
    (kx, rx, sx), (ky, ry, sy) = x_terms, y_terms
    if pairwise:
        dot, outer = (lambda a, b: jnp.matmul(a, b.T, precision=_HIGHEST)), jnp.outer
    else:
        dot, outer = (lambda a, b: jnp.sum(a * b, axis=1)), jnp.multiply
    trace = dot(kx, ky)  # tr(K_i L_j): the Grams are symmetric
    if not debiased:
        return trace / (n - 1) ** 2
    total = trace + outer(sx, sy) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * dot(rx, ry)  # 1ᵀK̃_i L̃_j 1 = r_i·r_j
    return total / (n * (n - 3))


def _pairwise_cka_gram(h: jax.Array, perm: jax.Array | None, debiased: bool) -> jax.Array:
    """(L, n, D) prepared stack -> (L, L) CKA of h[i] against h[j] (examples of h[j] permuted by
    `perm` if given), from one n×n Gram matrix per layer: L·n²·D + L²·n² work instead of the
    feature path's L²·n·D². A permutation of the examples permutes a Gram's rows and columns, so the
    shuffled null reuses the same Grams."""
    n = h.shape[1]
    x_terms = _gram_terms(h, debiased)
    y_terms = x_terms
    if perm is not None:
        k, rows, totals = x_terms
        y_terms = (k.reshape(-1, n, n)[:, perm][:, :, perm].reshape(k.shape), rows[:, perm], totals)
    cross = _hsic_from_grams(x_terms, y_terms, n, debiased)
    # self-HSIC is invariant to a permutation of the examples: one normaliser for both arguments
    self_hsic = _hsic_from_grams(x_terms, x_terms, n, debiased, pairwise=False)
    return cross / jnp.sqrt(self_hsic[:, None] * self_hsic[None, :])


# The Gram path holds L·n² floats; above this many (1 GiB of float32) the feature path is used.
_GRAM_MAX_FLOATS = 2**28


def _use_gram(layers: int, n: int, d: int, method: str) -> bool:
    """Whether to take the Gram path (static shapes). "auto": when n <= 4·D and the L Grams fit in
    memory. Counting arithmetic alone misleads: the Gram path is memory-bound (n×n Grams, the
    permuted gather of the null), the feature path runs as dense matmuls; where each wins was
    measured (benchmarks/README.md, changes tried)."""
    if method not in STACK_METHODS:
        raise ValueError(f"method={method!r}; expected one of {list(STACK_METHODS)}")
    if method != "auto":
        return method == "gram"
    return n <= 4 * d and layers * n * n <= _GRAM_MAX_FLOATS


@partial(jax.jit, static_argnames=("debiased", "method"))
def stack_cka(h: jax.Array, debiased: bool = True, method: str = "auto") -> jax.Array:
    """Linear CKA between every pair of layers.

    Args:
        h: (L, ..., D) stacked layer representations.
        debiased: see :func:`linear_cka`.
        method: ``"features"`` (D×D cross-covariances per pair, O(D²) memory), ``"gram"`` (one n×n
            Gram per layer, O(L·n²) memory) or ``"auto"``: Gram when n <= D.
            Both give the same numbers to float32 rounding.

    Returns:
        (L, L) symmetric matrix; entry (i, j) = linear_cka(h[i], h[j]).
    """
    h = jax.vmap(_prepare)(_flatten_stack(h))
    _check_n(h.shape[1], debiased)
    if _use_gram(*h.shape, method):
        return _pairwise_cka_gram(h, None, debiased)
    return _pairwise_cka(h, h, debiased, symmetric=True)


@partial(jax.jit, static_argnames="debiased")
def shuffled_null_cka(x: jax.Array, y: jax.Array, key: jax.Array, debiased: bool = True) -> jax.Array:
    """Linear CKA after permuting the examples of ``y``: a null baseline.

    The permutation keeps each representation's marginal statistics but breaks
    the example correspondence, so the value is what CKA reads on unrelated
    representations of the same spectra.

    Args:
        x: (..., Dx) activations.
        y: (..., Dy) activations with the same leading shape.
        key: PRNG key; the permutation is jax.random.permutation(key, n).
        debiased: see :func:`linear_cka`.

    Returns:
        Scalar CKA of x against y with shuffled examples.
    """
    y = _examples(y)
    perm = jax.random.permutation(key, y.shape[0])
    return linear_cka(_examples(x), y[perm], debiased)


@partial(jax.jit, static_argnames=("debiased", "method", "half"))
def stack_cka_null(
    h: jax.Array, key: jax.Array, debiased: bool = True, method: str = "auto", half: bool = False
) -> jax.Array:
    """Shuffled-example null for :func:`stack_cka`.

    One permutation perm = jax.random.permutation(key, n) of the example axis
    is applied to the second argument of every pair, so entry (i, j) equals
    shuffled_null_cka(h[i], h[j], key).

    Args:
        h: (L, ..., D) stacked layer representations.
        key: PRNG key.
        debiased: see :func:`linear_cka`.
        method: see :func:`stack_cka`.
        half: compute only the pairs i <= j and mirror them, half the work: entry (i, j) is then
            shuffled_null_cka(h[min(i, j)], h[max(i, j)], key). (The full matrix's entry (j, i)
            equals shuffled_null_cka(h[i], h[j]) under the inverse permutation, since CKA is
            symmetric and invariant to permuting both arguments' examples alike: the mirrored
            value is the same null under another permutation, not an approximation.)

    Returns:
        (L, L) matrix (diagonal not 1; symmetric only with `half`).
    """
    h = jax.vmap(_prepare)(_flatten_stack(h))
    _check_n(h.shape[1], debiased)
    perm = jax.random.permutation(key, h.shape[1])
    if _use_gram(*h.shape, method):
        null = _pairwise_cka_gram(h, perm, debiased)
        return jnp.triu(null) + jnp.triu(null, 1).T if half else null
    return _pairwise_cka(h, h[:, perm], debiased, symmetric=half)
