"""The probe registry: one small `Probe` object per probe, composed by the probe program.

A probe is data, like a placement (models.placements). Each entry of `PROBES` declares
    name          the key users select it by (`ProbeConfig(probes=...)`, `lnscope probe --probes`)
    description   one line for `lnscope list`; the equation and citation live in the docstring of
                  its `compute` function
    needs         what the shared forward/backward pass must provide (`Needs`): parameter gradients,
                  site gradients ‖∂ℒ/∂site‖, a per-layer summary reduced inside the layer
    compute       its in-jit half: `compute(ctx, options) -> {quantity: {stack: {"layers": {site:
                  (L, ...)}, "stack": {site: ()}}}}` from the pass's `ProbeContext`
    quantities    its output quantities and, per quantity, its host half: how a per-layer array
                  becomes tidy rows (analysis.probe.tidy: `layer_rows`, `pairwise_rows`, `head_rows`)
    options       its own options dataclass (frozen, validated in `__post_init__`), or None
    cost          "cheap" (part of every probe step) or "costly" (opt-in: more passes or work)
    memory        what it holds besides the shared pass (analysis.memory.ProbeMemory: parameter
                  gradients, the stream stacked over layers, (L, L) matrices), for the size check
                  before compute (analysis.memory.probe_estimate reads declarations, never names)

The program (analysis.probe.probes) runs one forward pass, and one backward pass only when a
selected probe needs gradients, then calls each selected probe's `compute` in registry order.
Adding a probe = one compute function + one `register_probe(Probe(...))`; every test parametrized
over `PROBES` picks it up. docs/probes.md has the equations of every entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
import numpy as np

from analysis.memory import ProbeMemory

Cost = Literal["cheap", "costly"]
COSTS: tuple[str, ...] = ("cheap", "costly")
# host half of one quantity: (site, (n_seeds, L, ...) array)
#   -> rows as (site, values (n_seeds, k), layer (k,), other_layer (k,))
RowFn = Callable[[str, np.ndarray], Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]]]
# one layer's sites {site: (B, T, ...)} and the model's norm ε -> this probe's per-layer reductions
SummaryFn = Callable[[Mapping[str, jax.Array], float], Any]


@dataclass(frozen=True)
class Needs:
    """What one probe needs from the shared pass.

    Attributes:
        param_grads: ∂ℒ/∂θ (`ProbeContext.param_grads`).
        site_grads: ‖∂ℒ/∂site‖ at every site (`ProbeContext.site_grad_norm`); implies a backward pass.
        summary: per-layer reductions computed inside each layer of the stack, (layer sites, norm ε)
            -> arrays; the program stacks them over layers (`ProbeContext.summary[stack][name]`).
            A probe that reduces every site of every layer uses this instead of reading the stacked
            (L, B, T, D) sites: the reduction then fuses with the op that made the site.
    """

    param_grads: bool = False
    site_grads: bool = False
    summary: SummaryFn | None = None


@dataclass
class ProbeContext:
    """What the shared pass hands every probe's `compute` (all inside the jitted program).

    Attributes:
        cfg: the model's ModelConfig.
        state: the model's state (parameters and buffers) the pass ran on.
        batch: the batch.
        key: the probes' random key; a probe folds in its own number (jax.random.fold_in) so that
            probes never share draws.
        loss: the loss, ().
        sites: {stack: {"layers": {site: (L, B, T, ...)}, "stack": {site: (B, T, ...)}}}.
        stats: {stack: {"layers": {name: (L, ...)}}}: per-layer statistics the layers record
            (attention entropies `{kind}_entropy`, (L, H)).
        summary: {stack: {probe: its `Needs.summary` output stacked over layers}}.
        site_grad_norm: {stack: {"layers": {site: (L,)}, "stack": {site: ()}}} or None.
        param_grads: ∂ℒ/∂state (an nnx.State like `state`) or None.
        forward: (state, perturb) -> (loss, model output): the model's forward on this batch, for
            probes that evaluate it again (at moved parameters, under derivatives).
    """

    cfg: Any
    state: Any
    batch: Any
    key: jax.Array
    loss: jax.Array
    sites: dict
    stats: dict
    summary: dict
    site_grad_norm: dict | None
    param_grads: Any
    forward: Callable[..., tuple[jax.Array, Any]]


@dataclass(frozen=True)
class Probe:
    """A registry entry: one probe's needs, in-jit computation, tidy rows, options and cost.

    Attributes:
        name: registry key.
        description: one line (formula in words) for `lnscope list` and `--help`.
        compute: (ctx: ProbeContext, options) -> {quantity: {stack: {"layers": ..., "stack": ...}}}.
        needs: a `Needs`, or a function of the probe's options returning one (when an option decides
            whether gradients are needed).
        quantities: {quantity: host half (a `RowFn`) or None (one row per layer: (n_seeds, L))}; every
            quantity `compute` may return. Empty = {name: None}.
        options: the options dataclass (constructible with no arguments: its defaults), or None.
        option_prefix: flat keyword prefix of the options in `ProbeConfig(<prefix>_<field>=...)`
            (e.g. `cka_tokens`); defaults to `name`. Probes sharing a prefix share flat keywords.
        cost: "cheap" or "costly".
        memory: what it holds besides the shared pass (analysis.memory.ProbeMemory); default nothing.
    """

    name: str
    description: str
    compute: Callable[[ProbeContext, Any], dict]
    needs: Needs | Callable[[Any], Needs] = Needs()
    quantities: Mapping[str, RowFn | None] = field(default_factory=dict)
    options: type | None = None
    option_prefix: str = ""
    cost: Cost = "cheap"
    memory: ProbeMemory = ProbeMemory()

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"probe name must be an identifier, got {self.name!r}")
        if self.cost not in COSTS:
            raise ValueError(f"probe {self.name!r}: unknown cost {self.cost!r}; valid: {', '.join(COSTS)}")
        if self.options is not None and not (
            isinstance(self.options, type)
            and dataclasses.is_dataclass(self.options)
            and self.options.__dataclass_params__.frozen  # hashed: ProbeConfig is a compile-cache key
        ):
            raise ValueError(f"probe {self.name!r}: options must be a frozen dataclass type, got {self.options!r}")
        if not isinstance(self.memory, ProbeMemory):
            raise ValueError(f"probe {self.name!r}: memory must be an analysis.memory.ProbeMemory, got {self.memory!r}")
        if not self.quantities:
            object.__setattr__(self, "quantities", {self.name: None})
        if not self.option_prefix:
            object.__setattr__(self, "option_prefix", self.name)

    def default_options(self) -> Any:
        """The options dataclass at its defaults, or None for a probe without options."""
        return None if self.options is None else self.options()

    def needs_for(self, options: Any) -> Needs:
        return self.needs if isinstance(self.needs, Needs) else self.needs(options)


PROBES: dict[str, Probe] = {}


def register_probe(probe: Probe) -> Probe:
    """Add `probe` to `PROBES` (the program, `ProbeConfig`, the CLI and the tidy rows read it there).

    A name already registered is an error: replacing a probe would silently change the numbers of
    everything that selects it. Returns `probe`.
    """
    if not isinstance(probe, Probe):
        raise TypeError(f"register_probe takes a Probe, got {type(probe).__name__}")
    if probe.name in PROBES:
        raise ValueError(f"probe {probe.name!r} is already registered; registered: {', '.join(PROBES)}")
    taken = {q: p.name for p in PROBES.values() for q in p.quantities}
    clash = [q for q in probe.quantities if q in taken or q == "loss"]
    if clash:
        raise ValueError(
            f"probe {probe.name!r}: quantities {clash} are already produced by "
            f"{sorted({taken.get(q, 'the program (loss)') for q in clash})}"
        )
    PROBES[probe.name] = probe
    return probe


def probe_of_quantity(quantity: str) -> Probe | None:
    """The registered probe that produces `quantity`, or None (the loss, unregistered results)."""
    for probe in PROBES.values():
        if quantity in probe.quantities:
            return probe
    return None


def probe_memory(names: Iterable[str]) -> tuple[ProbeMemory, ...]:
    """The memory declarations of the probes `names` (for analysis.memory.probe_estimate); an unknown
    name is a ValueError listing the registered ones, before any compute."""
    if isinstance(names, str):
        raise ValueError(f"probes must be a tuple of names, got the string {names!r}; valid: {', '.join(PROBES)}")
    names = tuple(names)
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise ValueError(f"unknown probe(s) {unknown}; valid choices: {', '.join(PROBES)}")
    return tuple(PROBES[n].memory for n in names)
