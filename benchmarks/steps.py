"""lnscope's side of the benchmarks: the plain and the probed training step, as a user writes them.

A step is one `optax.adam` update of every parameter on `analysis.probe.loss`'s loss, jitted, model
and optimizer state in and out (donated). The probed step takes its gradients from
`probe_program_with_grads` (one forward and backward for the update and every probe). Timings end in
`jax.block_until_ready`; the first call (compile) and a second warm-up call are timed separately and
never mixed with the steady-state medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import optax

from analysis.execution import ExecutionPlan, default_plan
from analysis.probe.loss import loss_from_logits, model_inputs, random_batch
from analysis.probe.probes import STEP_PROBES, ProbeConfig, probe_program_with_grads
from models import ModelConfig, build_model

LEARNING_RATE = 1e-3
__all__ = ["STEP_PROBES", "StepPair", "make_train_steps", "median_ms", "timed"]  # STEP_PROBES: analysis.probe.probes


def make_train_steps(cfg: ModelConfig, pcfg: ProbeConfig, plan: ExecutionPlan | None = None):
    """(state, opt_state, plain_step, probed_step) for the model of `cfg` at seed 0, run as `plan`
    says (default: this backend's, analysis.execution).

    Both steps are jitted, donate their state, and map (state, opt_state, batch, key) to
    (state, opt_state, loss) -- plus the probe results for the probed step."""
    plan = default_plan() if plan is None else plan
    plan.check_model(cfg.dtype)
    graphdef, state = nnx.split(build_model(cfg, seed=0, ops=plan.model_ops()))
    opt = optax.adam(LEARNING_RATE)
    opt_state = opt.init(state)

    def loss_fn(state, batch):
        logits = nnx.merge(graphdef, state)(*model_inputs(cfg, batch))
        return loss_from_logits(cfg, logits, batch)

    def apply(state, opt_state, grads):
        updates, opt_state = opt.update(grads, opt_state, state)
        return optax.apply_updates(state, updates), opt_state

    def plain(state, opt_state, batch, key):
        del key
        loss, grads = jax.value_and_grad(loss_fn)(state, batch)
        state, opt_state = apply(state, opt_state, grads)
        return state, opt_state, loss

    def probed(state, opt_state, batch, key):
        result, grads = probe_program_with_grads(graphdef, state, batch, cfg, pcfg, key)
        state, opt_state = apply(state, opt_state, grads)
        return state, opt_state, result["loss"], result

    donate = dict(donate_argnums=(0, 1))
    return state, opt_state, jax.jit(plain, **donate), jax.jit(probed, **donate)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


class StepPair:
    """Both steps of one config, each chained on its own copy of the state, callable by name."""

    def __init__(
        self, cfg: ModelConfig, pcfg: ProbeConfig, batch_size: int, seq_len: int, plan: ExecutionPlan | None = None
    ):
        state, opt_state, plain, probed = make_train_steps(cfg, pcfg, plan)
        self.cfg = cfg
        self.batch = random_batch(cfg, jax.random.key(1), batch_size, seq_len)
        self.key = jax.random.key(2)
        copy = lambda tree: jax.tree.map(jnp.copy, tree)
        self.carry = {"plain": (copy(state), copy(opt_state)), "probed": (copy(state), copy(opt_state))}
        self.steps = {"plain": plain, "probed": probed}
        # compile (first call) and one more warm-up call, timed apart from the steady state
        self.first_call_s = {name: self.time(name) for name in self.steps}
        self.warmup_s = {name: self.time(name) for name in self.steps}

    def time(self, name: str) -> float:
        def call():
            out = self.steps[name](*self.carry[name], self.batch, self.key)
            self.carry[name] = out[:2]
            return out

        return timed(call)

    def compile(self) -> None:
        """Call the steps as compiled executables from now on: a jitted function called from another
        thread may retrace (JAX's configuration contexts are thread-local); an executable never does."""
        self.steps = {n: f.lower(*self.carry[n], self.batch, self.key).compile() for n, f in self.steps.items()}

    def twin(self) -> StepPair:
        """A second chain of the same steps on a copy of this one's state (another run of a sweep)."""
        other = object.__new__(StepPair)
        other.__dict__.update(self.__dict__)
        other.carry = {n: jax.tree.map(jnp.copy, c) for n, c in self.carry.items()}
        return other

    def round(self, calls: int) -> dict[str, list[float]]:
        """`calls` calls of each step, alternating call by call (order flipped every pair)."""
        times: dict[str, list[float]] = {"plain": [], "probed": []}
        for i in range(calls):
            for name in ("plain", "probed") if i % 2 == 0 else ("probed", "plain"):
                times[name].append(self.time(name))
        return times

    def flops(self, name: str = "plain") -> float | None:
        """XLA's own count of the floating-point operations of one call of a step."""
        step = self.steps[name]
        compiled = (
            step
            if isinstance(step, jax.stages.Compiled)
            else step.lower(*self.carry[name], self.batch, self.key).compile()
        )
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"]) if cost and "flops" in cost else None


def median_ms(xs: list[float]) -> float:
    return 1e3 * float(statistics.median(xs))
