"""The two operations a model is run with, which an execution plan may replace: the loop over a
stack's layers and the projection product. The model's math does not depend on them.

The defaults here are that math written plainly: every stack one `jax.lax.scan` over its layers,
every projection `x @ w`. `analysis.execution` supplies other implementations (an unrolled loop,
recomputation in the backward pass, a bfloat16 product, a weight-gradient layout) that compute the
same function up to float rounding, or, for a lower compute dtype, up to that dtype's rounding.

Both are static parts of a model (`Transformer(cfg, rngs, ops=...)`): they end up in its graphdef,
so they are frozen dataclasses or module-level functions, equal by value and hashable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jax

# body(carry, xs_l) -> (carry, ys_l): one layer; xs_l holds the layer's slice of every (L, ...) input
LayerBody = Callable[[Any, Any], tuple[Any, Any]]


class LayerLoop(Protocol):
    """Runs `body` over `length` consecutive layers (a segment, or all) of a stack of `stack_layers`,
    like `jax.lax.scan(body, carry, xs)`: returns (final carry, ys stacked along a leading (length,
    ...) axis). Whether it scans is decided by `stack_layers`, so every segment of a stack runs alike."""

    def scans(self, stack_layers: int) -> bool:
        """Whether a stack of `stack_layers` layers runs as `lax.scan`s (else layer by layer)."""
        ...

    def __call__(self, body: LayerBody, carry: Any, xs: Any, length: int, stack_layers: int) -> tuple[Any, Any]: ...


class Projection(Protocol):
    """x (M, K) @ w (K, N) -> (M, N)."""

    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array: ...


@dataclass(frozen=True)
class ScanLoop:
    """Every stack one `jax.lax.scan` over its layers (compile time flat in depth)."""

    def scans(self, stack_layers: int) -> bool:
        return True

    def __call__(self, body: LayerBody, carry: Any, xs: Any, length: int, stack_layers: int) -> tuple[Any, Any]:
        return jax.lax.scan(body, carry, xs, length=length)


def plain_projection(x: jax.Array, w: jax.Array) -> jax.Array:
    """x (M, K) @ w (K, N) in the inputs' dtype."""
    return x @ w


@dataclass(frozen=True)
class ModelOps:
    """The layer loop and the projection a model runs with (defaults: scan, `x @ w`)."""

    layer_loop: LayerLoop = ScanLoop()
    projection: Projection = plain_projection
