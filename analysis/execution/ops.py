"""The layer loops and projection products an execution plan runs a model with (models.ops): every
trick that changes how, never what, a model computes lives here, with its reason.

    PlannedLoop          scan, or unroll stacks up to a depth (with a gradient barrier); recompute
                         scanned layers in the backward pass (remat)
    layout_projection    x @ w whose weight gradient is a standard-layout product on CPUs
    MixedProjection      bfloat16 inputs, float32 accumulation, forward and backward
    vmap_seeds           jax.vmap over seeds that runs one seed unbatched (keeps that layout)

Each computes the function of `models.ops`' plain defaults: up to float rounding, and for
`MixedProjection` up to the rounding of its inputs to bfloat16 (tests/analysis/execution/).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from models.ops import LayerBody


# ---------------------------------------------------------------------------------------------
# The layer loop.
# ---------------------------------------------------------------------------------------------
@jax.custom_vjp
def grad_barrier(tree: Any) -> Any:
    """Identity whose backward puts the incoming gradient through `jax.lax.optimization_barrier`.

    Forward: nothing changes. Backward: XLA must materialize ∂ℒ/∂(layer input) before anything
    below uses it, so it cannot fuse the residual-gradient chain into (and recompute it inside) the
    layer's weight-gradient products, which it does in an unrolled loop without it. Values and
    gradients are exactly those without the barrier.
    """
    return tree


def _barrier_fwd(tree: Any) -> tuple[Any, None]:
    return tree, None


def _barrier_bwd(_: None, cotangent: Any) -> tuple[Any]:
    return (jax.lax.optimization_barrier(cotangent),)


grad_barrier.defvjp(_barrier_fwd, _barrier_bwd)


def recomputed(body: Callable) -> Callable:
    """`body` whose backward recomputes its forward from its inputs (nothing else saved). CSE stays
    allowed: inside a scan the recomputation cannot be merged with the forward anyway (JAX's advice
    for checkpoint under scan)."""
    return jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)


def _unstack(tree: Any, n: int) -> list[Any]:
    """n trees, the i-th holding leaf[i] of every (n, ...) leaf of `tree` (None leaves stay None).

    One split per leaf: its transpose is one concatenate, where n separate slices would transpose
    to n full-size zero-padded gradients summed."""
    leaves, treedef = jax.tree.flatten(tree)
    parts = [[jnp.squeeze(p, 0) for p in jnp.split(leaf, n, axis=0)] for leaf in leaves]
    return [jax.tree.unflatten(treedef, [p[i] for p in parts]) for i in range(n)]


@dataclass(frozen=True)
class PlannedLoop:
    """A `models.ops.LayerLoop`: stacks of at most `unroll_layers` layers run layer by layer in
    Python (each layer's input through `grad_barrier` when `barrier`), deeper ones as one
    `lax.scan` whose layers recompute their forward in the backward pass when `remat`.

    Why unroll: the scan keeps its saved-for-backward values in stacked (L, ...) buffers that are
    zero-filled and sliced every step; an unrolled loop has none, but its program grows with depth.
    Why recompute: on a CPU writing and reading those buffers costs more than recomputing a small
    layer; an accelerator pays for the recomputed products instead. benchmarks/README.md measures both.
    """

    unroll_layers: int = 0
    barrier: bool = True
    remat: bool = False

    def scans(self, stack_layers: int) -> bool:
        return stack_layers > self.unroll_layers

    def __call__(self, body: LayerBody, carry: Any, xs: Any, length: int, stack_layers: int) -> tuple[Any, Any]:
        if self.scans(stack_layers):
            return jax.lax.scan(recomputed(body) if self.remat else body, carry, xs, length=length)
        outputs = []
        for layer_xs in _unstack(xs, length):
            carry, ys = body(grad_barrier(carry) if self.barrier else carry, layer_xs)
            outputs.append(ys)
        return carry, jax.tree.map(lambda *parts: jnp.stack(parts, axis=0), *outputs)


# ---------------------------------------------------------------------------------------------
# Projections.
# ---------------------------------------------------------------------------------------------
def _transposed_for_cpu(x: jax.Array) -> jax.Array:
    """xᵀ, materialized on a CPU (an optimization barrier keeps XLA from folding it into the dot)."""
    return jax.lax.platform_dependent(x, cpu=lambda x: jax.lax.optimization_barrier(x.T), default=lambda x: x.T)


@jax.custom_jvp
def layout_projection(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (M, K) @ w (K, N) -> (M, N), whose weight gradient is a standard-layout product on CPUs.

    Autodiff's weight gradient xᵀ·g contracts the leading axis of both operands; XLA folds the
    transpose into the dot, and its CPU backend runs such dots through a generic kernel, slower than
    its kernels for products that contract the first operand's last axis, with layout copies around
    them. The JVP below writes the weight tangent's term as (dwᵀ·xᵀ)ᵀ with xᵀ materialized on a CPU,
    so the reverse pass transposes it into products of xᵀ that contract its last axis: unbatched,
    and vmapped over two or more seeds. Vmapped over one seed, XLA transposes them again (the
    training programs squeeze such an axis: `vmap_seeds`). A custom JVP, not a custom
    VJP, so forward-mode transforms (jax.jvp, jacfwd) keep working. Other platforms take autodiff's
    form. Values: the same products, accumulated by another kernel (float rounding).
    """
    return x @ w


@layout_projection.defjvp
def _layout_projection_jvp(primals: tuple[jax.Array, jax.Array], tangents: tuple[jax.Array, jax.Array]):
    x, w = primals
    dx, dw = tangents
    weight_term = jax.lax.dot_general(dw, _transposed_for_cpu(x), (((0,), (0,)), ((), ()))).T  # (dwᵀ·xᵀ)ᵀ = x·dw
    return x @ w, dx @ w + weight_term


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _mixed_matmul(x: jax.Array, w: jax.Array, compute: str, layout: bool) -> jax.Array:
    """x (M, K) @ w (K, N) with both inputs rounded to `compute` (bfloat16), accumulated and returned
    in float32.

    The backward pass is mixed precision too: the float32 cotangent g is rounded to `compute`, and
    each input gradient is one more such product (g·wᵀ, xᵀ·g), returned in float32. With `layout`
    the weight gradient is a standard-layout product of a materialized xᵀ on CPUs, for the reason of
    `layout_projection`. XLA's CPU backend runs that product on float32 copies of the rounded inputs
    (its matmul library takes a bfloat16 product only in a row-major layout, which a transposed
    operand does not have when XLA decides): the same values, products of two bfloat16 numbers
    being exact in float32.
    """
    return jnp.matmul(x.astype(compute), w.astype(compute), preferred_element_type=jnp.float32)


def _mixed_matmul_fwd(x: jax.Array, w: jax.Array, compute: str, layout: bool):
    x, w = x.astype(compute), w.astype(compute)
    return jnp.matmul(x, w, preferred_element_type=jnp.float32), (x, w)


def _mixed_matmul_bwd(compute: str, layout: bool, rounded: tuple[jax.Array, jax.Array], g: jax.Array):
    x, w = rounded
    g = g.astype(compute)
    dx = jnp.matmul(g, w.T, preferred_element_type=jnp.float32)
    dw = jnp.matmul(_transposed_for_cpu(x) if layout else x.T, g, preferred_element_type=jnp.float32)
    return dx, dw


_mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


@dataclass(frozen=True)
class MixedProjection:
    """x (M, K) @ w (K, N) in mixed precision: inputs rounded to `compute` (bfloat16), products
    accumulated and returned in float32, forward and backward; everything that is not a projection
    (parameters, norms, softmax, residual stream, probes) stays in the parameters' float32.
    `layout`: the weight gradient as `layout_projection`'s, on CPUs. Faster only where the
    processor multiplies bfloat16 in hardware (benchmarks/README.md)."""

    compute: str = "bfloat16"
    layout: bool = True

    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        return _mixed_matmul(x, w, self.compute, self.layout)


def vmap_seeds(fn: Callable, in_axes: int | None | tuple = 0) -> Callable:
    """jax.vmap(fn, in_axes) over whole arguments (each in_axes entry 0 or None; positional arguments
    only), except that a seed axis of length 1 is squeezed instead of vmapped:
    fn runs on the one seed's arrays and its outputs get the axis back. Same numbers up to float
    rounding (tested against jax.vmap).

    Why: the projections' weight gradients are standard-layout products on a CPU when fn runs
    unbatched or over two or more seeds (`layout_projection`); vmapped over one
    seed, XLA computes them transposed and copies them back (benchmarks/README.md).
    Decided at trace time from the shapes, so one function serves both (jit retraces per shape).
    """
    entries = in_axes if isinstance(in_axes, tuple) else (in_axes,)
    if any(axis not in (0, None) or isinstance(axis, bool) for axis in entries):
        raise ValueError(
            f"vmap_seeds maps whole arguments over axis 0: in_axes entries must be 0 or None, got {in_axes!r}"
        )
    vmapped = jax.vmap(fn, in_axes=in_axes)

    def call(*args: Any) -> Any:
        axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
        mapped = [leaf for arg, axis in zip(args, axes) if axis == 0 for leaf in jax.tree.leaves(arg)]
        if not mapped or any(jnp.shape(leaf)[:1] != (1,) for leaf in mapped):
            return vmapped(*args)
        one = [jax.tree.map(lambda leaf: leaf[0], arg) if axis == 0 else arg for arg, axis in zip(args, axes)]
        return jax.tree.map(lambda leaf: jnp.expand_dims(leaf, 0), fn(*one))

    return call
