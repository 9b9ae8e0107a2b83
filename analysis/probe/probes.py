"""The probe program: loss, gradients and every requested probe in one jitted computation.

Probes are entries of the registry `PROBES` (analysis.probe.registry), each declaring what it needs
from one shared forward and backward pass; the program computes the union of those needs and calls
each selected probe's computation. Site gradients come from differentiating the loss with respect to
a point added at every probe site of the forward (models.sites): an all-zero perturbation, whose
gradient is ∂ℒ/∂site, or, in a scanned layer stack, a tap whose gradient is ‖∂ℒ/∂site‖²
(`_site_gradient_points` says why). One backward pass yields ∂ℒ/∂θ and ‖∂ℒ/∂site‖ for every site of
every layer; it runs only when a selected probe (or the caller) needs gradients. Which probes run is
static configuration: XLA compiles only what is asked.

Result layout (a nested dict of arrays, no leading seed axis here):
    {"loss": (), quantity: {stack: {"layers": {site: (L, ...)}, "stack": {site: ()}}}}
`stack` is "encoder", "decoder", or "model" (shared embedding and output head).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp

# The probe families register themselves on import: this order is the order of PROBES and CHEAP_PROBES.
# isort: off
from analysis.probe import gradients, activations, representations, sensitivity, geometry  # noqa: F401

# isort: on
from analysis.probe.loss import Batch, loss_from_logits, model_inputs
from analysis.probe.reductions import at_recorded_precision, frobenius, per_level
from analysis.probe.registry import PROBES, Probe, ProbeContext, register_probe
from analysis.probe.representations import CKA_NULLS, CKAOptions, CosineOptions
from analysis.probe.representations import cka_sites as _cka_sites
from analysis.probe.sensitivity import OUTPUT_CHANGE_MODES, HessianOptions, OutputChangeOptions
from models import ModelConfig
from models.sites import SquaredNormTap, squared_norm_taps, zeros_like_sites

__all__ = [
    "CHEAP_PROBES",
    "CKA_NULLS",
    "OUTPUT_CHANGE_MODES",
    "PROBES",
    "STEP_PROBES",
    "CKAOptions",
    "CosineOptions",
    "HessianOptions",
    "OutputChangeOptions",
    "Probe",
    "ProbeConfig",
    "cheap_probes",
    "cka_sites",
    "probe_program",
    "probe_program_with_grads",
    "register_probe",
]


def cheap_probes() -> tuple[str, ...]:
    """Every registered probe of cost "cheap", in registry order (probes registered later included)."""
    return tuple(name for name, probe in PROBES.items() if probe.cost == "cheap")


# The built-in cheap probes: the default probe set (every probe but the extra passes of the costly ones).
CHEAP_PROBES: tuple[str, ...] = cheap_probes()


def _flat_option_names() -> dict[str, list[tuple[str, str]]]:
    """{`<prefix>_<field>`: [(probe, field), ...]} over the registry: the flat keywords of ProbeConfig."""
    flat: dict[str, list[tuple[str, str]]] = {}
    for name, probe in PROBES.items():
        for f in dataclasses.fields(probe.options) if probe.options is not None else ():
            flat.setdefault(f"{probe.option_prefix}_{f.name}", []).append((name, f.name))
    return flat


def _options_of(probe: Probe, value: Any) -> Any:
    """`value` (an instance of the probe's options class, or a mapping of its fields) as that instance."""
    if probe.options is None:
        raise ValueError(
            f"probe {probe.name!r} takes no options; probes with options: "
            f"{', '.join(n for n, p in PROBES.items() if p.options is not None)}"
        )
    if isinstance(value, probe.options):
        return value
    if isinstance(value, Mapping):
        fields = [f.name for f in dataclasses.fields(probe.options)]
        unknown = [k for k in value if k not in fields]
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} of probe {probe.name!r}; valid: {', '.join(fields)}")
        return probe.options(**value)
    raise ValueError(
        f"options of probe {probe.name!r} must be a {probe.options.__name__} or a mapping of its fields, got {value!r}"
    )


@dataclass(frozen=True, init=False)
class ProbeConfig:
    """Which probes run, and each probe's own options.

        ProbeConfig(probes=("act_norm", "cka"), options={"cka": CKAOptions(tokens=128)})
        ProbeConfig(probes=("act_norm", "cka"), cka_tokens=128)      # the same: a flat keyword

    Attributes:
        probes: names from PROBES.
        options: ((probe, its options dataclass), ...) for every probe whose options differ from
            its defaults, sorted by probe name (so equal settings compare and hash equal: the
            config is part of the compile key). Read one probe's options with `option(name)`.

    Construction takes `options` as a mapping {probe: options instance or {field: value}}, and the
    flat keywords `<prefix>_<field>` of every probe's options (PROBES[name].option_prefix): the
    historical `cka_tokens`, `cka_null`, `cka_debiased`, `similarity_sites` (both cosine probes),
    `output_change_lr`, `output_change_mode`, `hessian_iters`. Each is also readable as an attribute
    (`STEP_PROBES.cka_tokens`). Options of probes not selected are kept, and validated.
    """

    probes: tuple[str, ...]
    options: tuple[tuple[str, Any], ...]

    def __init__(
        self, probes: Iterable[str] = CHEAP_PROBES, options: Mapping[str, Any] | None = None, **flat: Any
    ) -> None:
        if isinstance(probes, str):
            raise ValueError(
                f"probes must be a tuple of names, got the string {probes!r}; valid choices: {', '.join(PROBES)}"
            )
        probes = tuple(probes)
        unknown = [p for p in probes if p not in PROBES]
        if unknown:
            raise ValueError(f"unknown probe(s) {unknown}; valid choices: {', '.join(PROBES)}")
        given: dict[str, Any] = {}
        for name, value in dict(options or {}).items():
            if name not in PROBES:
                raise ValueError(f"options for unknown probe {name!r}; valid choices: {', '.join(PROBES)}")
            given[name] = _options_of(PROBES[name], value)
        table = _flat_option_names()
        bad = [k for k in flat if k not in table]
        if bad:
            raise TypeError(f"ProbeConfig got unknown keyword(s) {bad}; valid: probes, options, {', '.join(table)}")
        for key, value in flat.items():
            for name, field_name in table[key]:
                if name in (options or {}):
                    raise ValueError(f"{key} given both as a keyword and in options[{name!r}]")
                current = given.get(name, PROBES[name].default_options())
                given[name] = dataclasses.replace(current, **{field_name: value})
        kept = tuple(sorted((n, o) for n, o in given.items() if o != PROBES[n].default_options()))
        object.__setattr__(self, "probes", probes)
        object.__setattr__(self, "options", kept)

    def option(self, name: str) -> Any:
        """The options of probe `name` (its defaults unless set), or None for a probe without options."""
        if name not in PROBES:
            raise ValueError(f"unknown probe {name!r}; valid choices: {', '.join(PROBES)}")
        return dict(self.options).get(name, PROBES[name].default_options())

    def __getattr__(self, key: str) -> Any:
        # flat option names as attributes (`pcfg.cka_tokens`); only called when normal lookup fails
        if key.startswith("__"):
            raise AttributeError(key)
        table = _flat_option_names()
        if key not in table:
            raise AttributeError(f"ProbeConfig has no attribute {key!r}; flat options: {', '.join(table)}")
        name, field_name = table[key][0]
        return getattr(self.option(name), field_name)


# The probe set of a probed training step that runs every step: every cheap probe, with CKA and its
# null on 128 of the batch's tokens and half the null's pairs, because CKA's cost grows with the
# square of its tokens and it would otherwise dominate the step (measurements: benchmarks/README.md).
STEP_PROBES = ProbeConfig(probes=CHEAP_PROBES, cka_tokens=128, cka_null="half")


def cka_sites(pcfg: ProbeConfig, n_tokens: int, site: str = "resid_post") -> tuple[str, str]:
    """Row site names of (cka, cka_null) under `pcfg`'s CKA options (representations.cka_sites)."""
    return _cka_sites(pcfg.option("cka"), n_tokens, site)


# ---------------------------------------------------------------------------------------------
# What the shared pass computes for the selected probes.
# ---------------------------------------------------------------------------------------------
def _layer_summary(selected: list[tuple[Probe, Any]], eps: float) -> Callable[[dict], dict] | None:
    """The per-layer reductions (`Needs.summary`) of the selected probes as one function of a layer's
    sites (lead 0: one layer), run inside the layer (models.stack.Stack's `summarize`), or None when
    no probe needs one. A reduction of every site of every layer taken on the stacked (L, B, T, D)
    sites would stack each site and read it again; inside the layer it fuses with the op that made
    the site."""
    summaries = {p.name: fn for p, o in selected if (fn := p.needs_for(o).summary) is not None}
    if not summaries:
        return None

    def summarize(layer: dict) -> dict:
        layer = {k: at_recorded_precision(v) for k, v in layer.items()}
        return {name: fn(layer, eps) for name, fn in summaries.items()}

    return summarize


def _site_gradient_points(model: nnx.Module, sites: dict) -> dict:
    """What the backward pass differentiates at each stack's sites (`sites`: shapes of a forward's of
    `model`, a models.Transformer).

    A scanned stack gets ‖∂ℒ/∂site‖² taps: full per-layer gradients would each be written into a
    stacked (L, B, T, D) buffer by every iteration of the backward loop, and zeros of that size fed
    in. An unrolled stack gets zero perturbations: its gradients are stacked once per site, while taps
    would add a reduction per site and layer. The norms agree to float rounding (~1e-6 relative).
    This is the program's one reading of how the model's stacks are executed: each stack's layer loop
    (models.ops, set by the execution plan) says whether it scans.
    """
    scanned = {name: stack.layer_loop.scans(stack.spec.layers) for name, stack in model.stacks.items()}
    return {name: squared_norm_taps(s) if scanned[name] else zeros_like_sites(s) for name, s in sites.items()}


def _site_grad_norm(g: jax.Array | SquaredNormTap, lead: int) -> jax.Array:
    """‖∂ℒ/∂site‖ (Frobenius over batch and tokens) from the gradient of one `_site_gradient_points`
    point: a full site gradient, or a tap's squared norm."""
    return jnp.sqrt(g.zero) if isinstance(g, SquaredNormTap) else frobenius(g, lead)


# ---------------------------------------------------------------------------------------------
# The program.
# ---------------------------------------------------------------------------------------------
def probe_program(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: Batch,
    cfg: ModelConfig,
    pcfg: ProbeConfig = ProbeConfig(),
    key: jax.Array | None = None,
) -> dict:
    """Loss and every probe of `pcfg.probes` for one model state and one batch (jit/vmap this)."""
    return _probe_program(graphdef, state, batch, cfg, pcfg, key, want_grads=False)[0]


def probe_program_with_grads(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: Batch,
    cfg: ModelConfig,
    pcfg: ProbeConfig = ProbeConfig(),
    key: jax.Array | None = None,
) -> tuple[dict, nnx.State]:
    """(probe_program's result, ∂ℒ/∂state) from the same single forward and backward pass, for a
    training step that probes: the update reuses the gradients instead of differentiating again."""
    return _probe_program(graphdef, state, batch, cfg, pcfg, key, want_grads=True)


def _probe_program(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    batch: Batch,
    cfg: ModelConfig,
    pcfg: ProbeConfig,
    key: jax.Array | None,
    want_grads: bool,
) -> tuple[dict, nnx.State | None]:
    """The probe program; with `want_grads` the parameter gradients are computed (even if no probe
    needs them) and returned, else None is returned in their place."""
    wanted = set(pcfg.probes)
    selected = [(p, pcfg.option(name)) for name, p in PROBES.items() if name in wanted]  # registry order
    needs = [p.needs_for(o) for p, o in selected]
    site_grads = any(n.site_grads for n in needs)
    key = jax.random.key(0) if key is None else key
    inputs = model_inputs(cfg, batch)

    def forward(state, perturb, summarize=None):
        out = nnx.merge(graphdef, state).forward(*inputs, perturb=perturb, summarize=summarize)
        return loss_from_logits(cfg, out.logits, batch), out

    summarize = _layer_summary(selected, cfg.norm_eps)
    g_state, site_grad_norm = None, None
    if want_grads or site_grads or any(n.param_grads for n in needs):
        points = None
        if site_grads:
            shapes = jax.eval_shape(lambda s: forward(s, None)[1].sites, state)
            points = _site_gradient_points(nnx.merge(graphdef, state), shapes)
        (loss, out), (g_state, g_points) = jax.value_and_grad(forward, argnums=(0, 1), has_aux=True)(
            state, points, summarize
        )
        if points is not None:
            site_grad_norm = {name: per_level(g, _site_grad_norm) for name, g in g_points.items()}
    else:
        loss, out = forward(state, None, summarize)
    ctx = ProbeContext(
        cfg=cfg,
        state=state,
        batch=batch,
        key=key,
        loss=loss,
        sites=out.sites,
        stats=out.stats,
        summary={name: st["layers"].get("summary", {}) for name, st in out.stats.items()},
        site_grad_norm=site_grad_norm,
        param_grads=g_state,
        forward=lambda s, perturb: forward(s, perturb),
    )
    result: dict[str, Any] = {"loss": loss}
    for probe, options in selected:
        produced = probe.compute(ctx, options)
        extra = [q for q in produced if q not in probe.quantities]
        if extra:
            declared = list(probe.quantities)
            raise ValueError(f"probe {probe.name!r} returned undeclared quantities {extra}; declared: {declared}")
        result.update(produced)
    return result, (g_state if want_grads else None)
