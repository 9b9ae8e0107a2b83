"""Structural signatures of the registries' entries, and one representative per signature.

The expensive test tiers (a placement x norm x arch product, float64 finite differences per
placement, planned layer loops against the scan) compile one program per case. Most registry entries
differ from another entry only in numbers: DeepNorm, xSkip+LN and Post-LN run one code path with
different constants (alpha, lambda, 1) and init gains; CompleteP and DeepScaleLM are Pre-LN's path
with constant branch/stream multipliers; T-Fixup is the plain residual with other init gains;
parameter-free norms differ only in the map they apply. Such a pair can fail a product tier
differently only through its equation (or a constant's dtype under strict promotion, which is why
tests/analysis/probe/test_probes.py traces every placement on the decoder), and every equation is
restated per entry by a cheap tier
(tests/models/test_placements_reference.py, tests/models/test_norms.py, the fast build tier of
tests/models/test_invariants.py, which also runs every entry forward). What a product tier adds over
those is the interaction of an entry's *structure* with the machinery around it: which parameters
the scan slices per layer, which sites are recorded and perturbed, which stream form the carry has,
which norm modules sit where and at what width. So the product tiers run one representative (the
first in registry order) of every signature below, and a new entry with a new structure gets its own
representative without editing any test.

A placement's forward signature is every field of `models.placements.Placement` except
`VALUE_ONLY_FIELDS` (numbers, names, documentation, training-only hooks), with callables named by
their qualified name and the wiring replaced by the Sub operations it uses (`SUB_OPERATIONS`, the
keyword arguments included, `const` excluded: a constant is a number in the equation). A field added
to `Placement` later joins the signature automatically.

A placement's attention call (`attention_arguments`) is the set of optional arguments its blocks
pass to self-attention (norms of q/k/v or of the concatenated heads, head gains, q/k scales, a
score scale): the only place where a placement's structure meets the attention mask, i.e. where an
encoder (unmasked) and a decoder (causal) of one placement run differently.

A norm's signature is its module's parameters (name and number of axes): how it is stacked per
layer, sliced by the scan and built at a slot's width. Its map is restated per entry in
tests/models/test_norms.py.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp

import models.placements as placements_module
from models import NORMS, PLACEMENTS, ModelConfig, Transformer
from models.layers import Attention
from models.placements import Placement

# Placement fields that hold numbers, names or documentation, or act only between optimizer steps:
# constants and init_gains are values in the equation (DeepNorm's alpha and beta, T-Fixup's gains);
# optimizer_rules and after_update never run inside the forward or backward pass that the tiers using
# these signatures compile (tests/analysis/train/test_optim_placement_rules.py and
# tests/models/test_placements_ngpt_subln.py test the two placements that declare them).
VALUE_ONLY_FIELDS = frozenset(
    {
        "name",
        "reference",
        "aliases",
        "constants",
        "init_gains",
        "embed_init_gain",  # an init gain of the embedding table: numbers, like init_gains
        "optimizer_rules",
        "after_update",
    }
)
# What a wiring function may do inside a sublayer (models.placements.Sub and the keywords of its
# methods), except `const`.
SUB_OPERATIONS = frozenset(
    {"branch", "norm", "param", "site", "layer_input", "is_last", "step", "qk_scale", "score_scale", "hidden_scale"}
)
# A tiny config to evaluate the per-layer parameter and constant declarations with (only their
# names and number of axes enter a signature).
_PROBE_CFG = dict(d_model=8, heads=2, d_ff=16, vocab=16, layers=2, max_len=4)


def _functions_called(fn: types.FunctionType) -> Iterable[types.FunctionType]:
    """fn and the functions of models.placements it calls, transitively (e.g. nGPT's shared step)."""
    seen, todo = set(), [fn]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        for name in f.__code__.co_names:
            value = getattr(placements_module, name, None)
            if isinstance(value, types.FunctionType) and value.__module__ == placements_module.__name__:
                todo.append(value)
    return seen


def sub_operations(wire: Callable) -> frozenset[str]:
    """The Sub operations (and their keywords) a wiring function uses."""
    names: set[str] = set()
    for f in _functions_called(wire):
        names |= set(f.__code__.co_names)
        names |= {c for const in f.__code__.co_consts if isinstance(const, tuple) for c in const}
    return frozenset(names & SUB_OPERATIONS)


def _structural(value: Any) -> Hashable:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _structural(v)) for k, v in value.items()))
    if isinstance(value, (tuple, list)):
        return tuple(_structural(v) for v in value)
    if isinstance(value, jax.Array):
        return ("array", value.ndim)
    if callable(value):
        return f"{value.__module__}.{value.__qualname__}"
    return value


def placement_signature(placement: Placement) -> Hashable:
    """The forward structure of a placement (module docstring): equal signatures, same code path."""
    cfg = ModelConfig(**_PROBE_CFG, placement=placement.name)
    spec = cfg.stacks()[0]
    fields = []
    for field in dataclasses.fields(Placement):
        if field.name in VALUE_ONLY_FIELDS:
            continue
        value = getattr(placement, field.name)
        if field.name == "wiring":
            value = {kind: tuple(sorted(sub_operations(wire))) for kind, wire in value.items()}
        elif field.name in ("layer_params", "layer_constants"):
            # which per-layer values exist (names, number of axes), not the function that makes them
            value = value(cfg, spec)
            value = {
                k: {n: getattr(v, "ndim", 1) for n, v in vs.items()} if isinstance(vs, Mapping) else len(vs)
                for k, vs in value.items()
            }
        fields.append((field.name, _structural(value)))
    return tuple(fields)


# The optional arguments of the attention call (default None): a new one is seen without editing this file.
ATTENTION_OPTIONS = tuple(
    name for name, parameter in inspect.signature(Attention.__call__).parameters.items() if parameter.default is None
)


@functools.cache
def attention_arguments(placement: str) -> frozenset[str]:
    """The optional arguments (`ATTENTION_OPTIONS`) that `placement`'s blocks pass to self-attention,
    recorded while tracing a one-layer encoder (tracing only, nothing compiles): empty for a placement
    whose structure sits only around the attention branch."""
    passed: set[str] = set()
    plain_call = Attention.__call__

    def recording_call(self, *args, **kwargs):
        passed.update(name for name in ATTENTION_OPTIONS if kwargs.get(name) is not None)
        return plain_call(self, *args, **kwargs)

    cfg = ModelConfig(**{**_PROBE_CFG, "layers": 1}, placement=placement, arch="encoder")
    Attention.__call__ = recording_call
    try:
        jax.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))(jnp.zeros((1, 2), jnp.int32)))
    finally:
        Attention.__call__ = plain_call
    return frozenset(passed)


def attention_representatives() -> tuple[str, ...]:
    """Pre-LN (the plain attention call) and every placement representative whose blocks pass the
    attention something (`attention_arguments`), in registry order: the structures that an encoder's
    unmasked attention can meet differently from a decoder's masked one. Everything else a stack
    runs (stream wiring, norms, per-layer parameters, scan, site taps) is the same code in both."""
    return tuple(dict.fromkeys(["pre", *(p for p in PLACEMENT_GROUPS if attention_arguments(p))]))


def norm_signature(name: str) -> Hashable:
    """The parameters (name, number of axes) of the norm module `name` builds."""
    module = nnx.eval_shape(lambda: NORMS[name](4, ModelConfig(), nnx.Rngs(0)))
    params = nnx.to_flat_state(nnx.state(module, nnx.Param))
    return tuple(sorted((".".join(map(str, path)), len(value.shape)) for path, value in params))


def representatives(signatures: Mapping[str, Hashable]) -> dict[str, list[str]]:
    """{representative: every name sharing its signature}, the representative first in `signatures`' order."""
    groups: dict[Hashable, list[str]] = {}
    for name, signature in signatures.items():
        groups.setdefault(signature, []).append(name)
    return {members[0]: members for members in groups.values()}


# {entry: signature} for every registry entry, and {representative: entries of its signature}.
PLACEMENT_SIGNATURES = {name: placement_signature(placement) for name, placement in PLACEMENTS.items()}
NORM_SIGNATURES = {name: norm_signature(name) for name in NORMS}
PLACEMENT_GROUPS = representatives(PLACEMENT_SIGNATURES)
NORM_GROUPS = representatives(NORM_SIGNATURES)
# One placement / norm per structure, in registry order.
PLACEMENT_REPRESENTATIVES = tuple(PLACEMENT_GROUPS)
NORM_REPRESENTATIVES = tuple(NORM_GROUPS)
