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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from analysis.train.fields import check_choice, check_int, check_number, runtime_field
from models import PLACEMENTS, ModelConfig

Schedule = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a learning-rate schedule and optional global-norm clipping (optax).

    Attributes:
        lr: peak learning rate.
        schedule: learning-rate schedule; inverse_sqrt: linear warm-up, then lr·sqrt(warmup/step) (the
            papers'), constant: after an optional linear warm-up, cosine: linear warm-up, then cosine
            decay to 0.
        warmup_steps: linear warm-up length; 0 = none (inverse_sqrt needs >= 1).
        b1: Adam's first-moment decay.
        b2: Adam's second-moment decay; 0.98 as in fairseq's Transformer recipes (the papers').
        eps: Adam's epsilon; 1e-8 as in fairseq's Transformer recipes (the papers').
        weight_decay: AdamW's decoupled weight decay, applied to every parameter.
        clip_norm: clip the gradient's global norm to this value before Adam; None = no clipping.
    """

    lr: float = runtime_field(1e-3)  # Hyper: an argument of the compiled step
    schedule: str = "constant"
    warmup_steps: int = runtime_field(0)  # Hyper
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        check_number("lr", self.lr, 0.0, low_open=True)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_int("warmup_steps", self.warmup_steps, 0)
        if self.schedule == "inverse_sqrt" and self.warmup_steps < 1:
            raise ValueError("schedule 'inverse_sqrt' needs warmup_steps >= 1 (lr·sqrt(warmup/step) after it)")
        check_number("b1", self.b1, 0.0, 1.0, high_open=True)
        check_number("b2", self.b2, 0.0, 1.0, high_open=True)
        check_number("eps", self.eps, 0.0)
        check_number("weight_decay", self.weight_decay, 0.0)
        if self.clip_norm is not None:
            check_number("clip_norm", self.clip_norm, 0.0, low_open=True)


class Hyper(NamedTuple):
    """The optimizer's numbers that are runtime arguments of the compiled step, not constants in it:
    a learning-rate or warm-up sweep reuses one compiled program. Float32 scalars."""

    lr: jax.Array
    warmup: jax.Array
    total: jax.Array

    @classmethod
    def of(cls, o: OptimConfig, total: int) -> Hyper:
        f = lambda x: jnp.asarray(x, jnp.float32)
        return cls(f(o.lr), f(o.warmup_steps), f(total))


def _warmup(step: jax.Array, w: jax.Array) -> jax.Array:
    """(s+1)/w during warm-up, 1 after (and always 1 when w = 0)."""
    return jnp.where(w > 0, jnp.minimum(1.0, (step + 1.0) / jnp.maximum(w, 1.0)), 1.0)


def constant(step: jax.Array, lr: jax.Array, w: jax.Array, total: jax.Array) -> jax.Array:
    """η after a linear warm-up."""
    return lr * _warmup(step, w)


def inverse_sqrt(step: jax.Array, lr: jax.Array, w: jax.Array, total: jax.Array) -> jax.Array:
    """Linear warm-up to η at s = w−1, then η·sqrt(w/(s+1)) (w >= 1, checked by OptimConfig)."""
    return lr * jnp.where(step < w, (step + 1.0) / w, jnp.sqrt(w / (step + 1.0)))


def cosine(step: jax.Array, lr: jax.Array, w: jax.Array, total: jax.Array) -> jax.Array:
    """Linear warm-up, then η·½(1 + cos(π·progress)), progress = (s−w)/(T−w) in [0, 1]."""
    progress = jnp.clip((step - w) / jnp.maximum(total - w, 1.0), 0.0, 1.0)
    decay = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return lr * jnp.where(step < w, (step + 1.0) / jnp.maximum(w, 1.0), decay)


SCHEDULES: dict[str, Schedule] = {"inverse_sqrt": inverse_sqrt, "constant": constant, "cosine": cosine}


def scheduled_lr(step: jax.Array | int, schedule: str, hyper: Hyper) -> jax.Array:
    """η_s (float32) of `schedule` for update index `step` (int or int array)."""
    s = jnp.asarray(step).astype(jnp.float32)
    return SCHEDULES[schedule](s, hyper.lr, hyper.warmup, hyper.total).astype(jnp.float32)


def learning_rate(step: jax.Array | int, o: OptimConfig, total: int) -> jax.Array:
    """η_s of `o.schedule` for update index `step` of a `total`-step run."""
    return scheduled_lr(step, o.schedule, Hyper.of(o, total))


def make_optimizer(o: OptimConfig, model: ModelConfig | None = None) -> optax.GradientTransformation:
    """optax AdamW(b1, b2, eps, weight_decay) at unit learning rate, after clip_by_global_norm if set.

    The schedule's η_s multiplies the result (`adamw_updates`): AdamW's update
    −η_s·(m̂/(sqrt(v̂)+ε) + λθ) is linear in η_s, so this is AdamW with learning rate η_s, with η
    and the warm-up kept out of the compiled program's constants.

    `model`: where its placement declares optimizer rules (`Placement.optimizer_rules`, e.g.
    CompleteP's depth rules), the parameters of each such stack's layers get their own AdamW with
    ε × rules["eps"] and an update × rules["lr"] (so learning rate and decoupled decay both scale);
    every other parameter gets the plain AdamW. Without rules the optimizer is the plain one.
    """
    adamw = lambda eps: optax.adamw(learning_rate=1.0, b1=o.b1, b2=o.b2, eps=eps, weight_decay=o.weight_decay)
    rules = placement_rules(model) if model is not None else {}
    if rules:
        groups = {
            stack: optax.chain(adamw(o.eps * r.get("eps", 1.0)), optax.scale(r.get("lr", 1.0)))
            for stack, r in rules.items()
        }
        opt = optax.multi_transform({**groups, OTHER_GROUP: adamw(o.eps)}, lambda params: param_groups(params, rules))
    else:
        opt = adamw(o.eps)
    return opt if o.clip_norm is None else optax.chain(optax.clip_by_global_norm(o.clip_norm), opt)


OTHER_GROUP = "other"  # the label of parameters outside every stack with optimizer rules


def placement_rules(model: ModelConfig) -> dict[str, dict[str, float]]:
    """{stack name: its placement's optimizer rules} for the stacks of `model` that declare any."""
    rules = {spec.name: dict(PLACEMENTS[spec.placement].optimizer_rules(model, spec)) for spec in model.stacks()}
    return {stack: r for stack, r in rules.items() if r}


def param_groups(params: Any, rules: dict[str, dict[str, float]]) -> Any:
    """The optimizer group of every leaf of `params` (a model state): the stack name for parameters
    under stacks/<stack>/layers of a stack with rules, else OTHER_GROUP."""

    def label(path: tuple, _: Any) -> str:
        keys = [getattr(k, "key", None) for k in path]
        if len(keys) > 2 and keys[0] == "stacks" and keys[2] == "layers" and keys[1] in rules:
            return keys[1]
        return OTHER_GROUP

    return jax.tree_util.tree_map_with_path(label, params)


def adamw_updates(
    opt: optax.GradientTransformation, schedule: str, hyper: Hyper, step: jax.Array, grads, opt_state, params
) -> tuple[object, optax.OptState, jax.Array]:
    """(updates, new optimizer state, η_s) of one AdamW step at update index `step`.

    optax (0.2.8) computes Adam's bias correction as `decay ** count` with a Python float and an int32
    count, which strict promotion (our tests' mode, equinox's practice) rejects. The model's compute
    stays strict; only optax's own arithmetic runs under the standard rules, which promote that pair
    to float32 exactly as optax intends.
    """
    lr = scheduled_lr(step, schedule, hyper)
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = opt.update(grads, opt_state, params)
    return jax.tree.map(lambda u: (lr * u).astype(u.dtype), updates), opt_state, lr
