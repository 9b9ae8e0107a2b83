"""Learning-rate schedules (a registry) and the optimizer: optax AdamW, optional global-norm clipping.

Step s is the 0-based index of an update; w = warmup_steps, T = the run's steps, η = lr.
Warm-up is linear and reaches η at the last warm-up update: η_s = η·(s+1)/w for s < w.

    constant:      η_s = η after warm-up.
    inverse_sqrt:  η_s = η·sqrt(w/(s+1)) after warm-up (Vaswani et al. 2017; fairseq's
                   `inverse_sqrt`, the schedule of Xiong et al. 2020 and the other seed papers).
    cosine:        η_s = η·½(1 + cos(π·(s−w)/(T−w))) after warm-up (Loshchilov & Hutter 2017,
                   decaying to 0 at the end of the run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import jax
import jax.numpy as jnp
import optax

if TYPE_CHECKING:
    from analysis.train.config import OptimConfig

Schedule = Callable[[jax.Array, "OptimConfig", int], jax.Array]


def _warmup(step: jax.Array, w: int) -> jax.Array:
    """(s+1)/w during warm-up, 1 after (and always 1 when w = 0)."""
    return jnp.minimum(1.0, (step + 1.0) / w) if w > 0 else jnp.ones_like(step)


def constant(step: jax.Array, o: "OptimConfig", total: int) -> jax.Array:
    """η after a linear warm-up."""
    return o.lr * _warmup(step, o.warmup_steps)


def inverse_sqrt(step: jax.Array, o: "OptimConfig", total: int) -> jax.Array:
    """Linear warm-up to η at s = w−1, then η·sqrt(w/(s+1))."""
    w = o.warmup_steps
    return o.lr * jnp.where(step < w, (step + 1.0) / w, jnp.sqrt(w / (step + 1.0)))


def cosine(step: jax.Array, o: "OptimConfig", total: int) -> jax.Array:
    """Linear warm-up, then η·½(1 + cos(π·progress)), progress = (s−w)/(T−w) in [0, 1)."""
    w = o.warmup_steps
    progress = jnp.clip((step - w) / max(total - w, 1), 0.0, 1.0)
    decay = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return o.lr * jnp.where(step < w, (step + 1.0) / max(w, 1), decay)


SCHEDULES: dict[str, Schedule] = {"inverse_sqrt": inverse_sqrt, "constant": constant, "cosine": cosine}


def learning_rate(step: jax.Array | int, o: "OptimConfig", total: int) -> jax.Array:
    """η_s of `o.schedule` (float32) for update index `step` (int or int array) of a `total`-step run."""
    return SCHEDULES[o.schedule](jnp.asarray(step).astype(jnp.float32), o, total).astype(jnp.float32)


def make_optimizer(o: "OptimConfig", total: int) -> optax.GradientTransformation:
    """optax AdamW(b1, b2, eps, weight_decay) on `learning_rate`, after clip_by_global_norm if set."""
    adamw = optax.adamw(
        learning_rate=lambda count: learning_rate(count, o, total),
        b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
    )  # fmt: skip
    return adamw if o.clip_norm is None else optax.chain(optax.clip_by_global_norm(o.clip_norm), adamw)


def optimizer_update(
    opt: optax.GradientTransformation, grads, opt_state, params
) -> tuple[object, optax.OptState]:
    """opt.update under standard dtype promotion.

    optax (0.2.8) computes Adam's bias correction as `decay ** count` with a Python float and an int32
    count, which strict promotion (our tests' mode, equinox's practice) rejects. The model's compute
    stays strict; only optax's own arithmetic runs under the standard rules, which promote that pair
    to float32 exactly as optax intends.
    """
    with jax.numpy_dtype_promotion("standard"):
        return opt.update(grads, opt_state, params)
