"""Structural invariants of the model zoo: every placement and norm builds in every arch, and every
placement structure with every norm structure in both stack kinds (tests/models/structural_signatures.py);
causality; Post-LN statistics; Pre-LN identity; scan == layer loop; dropout determinism; depth-independent jaxpr.

Cost: compiling dominates (~1-2 s for one tiny model on this 2-core machine, most of it fixed
per-compile overhead), so tests put many models into ONE jit (`jit_apply`) and compile at XLA
backend optimization level 0 (halves compile time; these tests check structure, not speed). Models
are constructed eagerly (`Transformer(cfg, nnx.Rngs(0))`, cheap once op dispatch is warm) and
Admin's profiling (`models.build.profile_admin`, what `build_model` runs after init) runs inside
the jit, so the product test exercises build_model's steps without compiling `init_state` per model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.nnx as nnx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import ARCHS, NORMS, PLACEMENTS, ModelConfig, Transformer
from models.build import init_state, profile_admin, profile_batch
from models.placements import post_ln, pre_ln
from models.sites import Taps
from tests.models.structural_signatures import (
    NORM_GROUPS,
    NORM_REPRESENTATIVES,
    NORM_SIGNATURES,
    PLACEMENT_GROUPS,
    PLACEMENT_REPRESENTATIVES,
    PLACEMENT_SIGNATURES,
    attention_representatives,
)

TINY = dict(d_model=8, heads=2, d_ff=16, vocab=16, layers=2, max_len=4, mix_post_fraction=0.5)
B, T = 2, 4
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, TINY["vocab"], (B, T)), jnp.int32)
O0 = {"xla_backend_optimization_level": 0}  # compile-time saving, numerics unaffected at this tolerance
# Two compiled (or compiled vs eager) evaluations of the same float32 function.
SAME_F32 = dict(rtol=1e-5, atol=1e-5)
# A change that must be visible (outputs are O(1)).
VISIBLE = 1e-4


def cfg_of(placement: str = "pre", norm: str = "layernorm", arch: str = "decoder", **kw: Any) -> ModelConfig:
    return ModelConfig(**{**TINY, "placement": placement, "norm": norm, "arch": arch, **kw})


def label(cfg: ModelConfig) -> str:
    return f"{cfg.placement}/{cfg.norm}/{cfg.arch}"


def inputs_of(cfg: ModelConfig, tokens: jax.Array = TOKENS, src: jax.Array | None = None) -> tuple[jax.Array, ...]:
    return (tokens if src is None else src, tokens) if cfg.arch == "encdec" else (tokens,)


def jitter(model: nnx.Module, seed: int = 1, scale: float = 0.2) -> nnx.Module:
    """Add noise to every parameter: gains ≠ 1, biases ≠ 0, ReZero α ≠ 0, Admin ω differing per layer.
    Invariants that hold only at init (α = 0 makes ReZero the identity) would otherwise pass vacuously."""
    leaves, tree = jax.tree.flatten(nnx.state(model, nnx.Param))
    rng = np.random.default_rng(seed)  # numpy: eager jax.random would compile once per leaf shape
    noisy = [a + jnp.asarray(scale * rng.standard_normal(a.shape), a.dtype) for a in leaves]
    nnx.update(model, jax.tree.unflatten(tree, noisy))
    return model


def jit_apply(
    modules: Sequence[nnx.Module], call: Callable[[nnx.Module, int], Any], *args: Any, labels: Sequence[str] = ()
) -> list[Any]:
    """[call(module_i, i)] for every module, all in one compiled program (see module docstring).
    `args` are passed through as traced arguments; an exception names the module that raised."""
    splits = [nnx.split(m) for m in modules]
    graphdefs = [g for g, _ in splits]

    def all_calls(states, args):
        out = []
        for i, (g, s) in enumerate(zip(graphdefs, states)):
            try:
                out.append(call(nnx.merge(g, s), i, *args))
            except Exception as error:
                error.add_note(f"while tracing {labels[i] if labels else i}")
                raise
        return out

    return jax.jit(all_calls, compiler_options=O0)([s for _, s in splits], args)


def build_eager(cfg: ModelConfig) -> Transformer:
    try:
        return Transformer(cfg, nnx.Rngs(0))
    except Exception as error:
        error.add_note(f"while building {label(cfg)}")
        raise


# -- every placement x norm x arch builds and gives finite logits ------------------------------
FAST_NORM_PLACEMENTS = ("pre", "post")


def fast_tier(arch: str) -> list[ModelConfig]:
    """Every placement with LayerNorm, and every norm under Pre-LN and Post-LN."""
    combos = {(p, "layernorm") for p in PLACEMENTS} | {(p, n) for p in FAST_NORM_PLACEMENTS for n in NORMS}
    return [cfg_of(p, n, arch) for p, n in sorted(combos)]


def check_builds(cfgs: list[ModelConfig]) -> None:
    # build_model = init + Admin profiling (a no-op for unprofiled placements) + forward.
    def build_and_run(model, i, tokens):
        cfg = cfgs[i]
        profile_admin(model, profile_batch(cfg, jax.random.key(0)))
        return model(*inputs_of(cfg, tokens))

    logits = jit_apply([build_eager(c) for c in cfgs], build_and_run, TOKENS, labels=[label(c) for c in cfgs])
    bad = [
        f"{label(c)}: shape {x.shape} dtype {x.dtype} finite {bool(jnp.all(jnp.isfinite(x)))}"
        for c, x in zip(cfgs, logits)
        if x.shape != (B, T, c.vocab) or x.dtype != jnp.float32 or not bool(jnp.all(jnp.isfinite(x)))
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_tier_builds_finite(arch):
    check_builds(fast_tier(arch))


# The product tier's arch: encdec holds both stack kinds and every sublayer kind (a bidirectional
# encoder, a causal decoder with cross-attention), so every norm slot a placement declares is built
# there. The encoder-only and decoder-only archs are one of those stacks with its own embedding,
# head and loss around it, which no (placement, norm) pair changes: the fast tier builds every
# placement and every norm in them.
PRODUCT_ARCH = "encdec"


def slow_tier(placement: str) -> list[ModelConfig]:
    """The placement's combinations with one norm per norm signature (tests/models/structural_signatures.py)
    in the product arch that the fast tier does not already compile."""
    fast = {label(c) for a in ARCHS for c in fast_tier(a)}
    combos = [cfg_of(placement, n, PRODUCT_ARCH) for n in NORM_REPRESENTATIVES]
    return [c for c in combos if label(c) not in fast]


@pytest.mark.slow
@pytest.mark.parametrize("placement", [p for p in PLACEMENT_REPRESENTATIVES if slow_tier(p)])
def test_full_product_builds_finite(placement):
    # Together with the fast tier (every placement and every norm, each in every arch) this covers every
    # combination of a placement structure and a norm structure in both stack kinds; combos already in
    # the fast tier are not compiled twice. Why one entry per structure suffices: structural_signatures.py;
    # why one arch: PRODUCT_ARCH.
    check_builds(slow_tier(placement))


def test_product_tiers_cover_everything():
    # The parametrizations above are derived from the registries, so a new placement or norm is
    # compiled by the fast tier, and by the product tier if its structure is new, without editing this file.
    fast = [label(c) for a in ARCHS for c in fast_tier(a)]
    slow = [label(c) for p in PLACEMENT_REPRESENTATIVES for c in slow_tier(p)]
    assert len(set(fast) | set(slow)) == len(fast) + len(slow), "a combination compiled twice"
    built = {tuple(name.split("/")) for name in fast + slow}
    # the fast tier: every registry entry, in every arch
    assert {(p, a) for p, _, a in built} == {(p, a) for p in PLACEMENTS for a in ARCHS}
    assert {(n, a) for _, n, a in built} == {(n, a) for n in NORMS for a in ARCHS}
    # the product tier: every (placement signature, norm signature) the registries hold, in the product arch
    placement_sig, norm_sig = PLACEMENT_SIGNATURES, NORM_SIGNATURES
    structures = {(placement_sig[p], norm_sig[n]) for p, n, a in built if a == PRODUCT_ARCH}
    assert structures == {(placement_sig[p], norm_sig[n]) for p in PLACEMENTS for n in NORMS}
    assert len(structures) == len(PLACEMENT_GROUPS) * len(NORM_GROUPS)
    assert PRODUCT_ARCH == "encdec" and {"encoder", "decoder"} == {s.name for s in cfg_of(arch=PRODUCT_ARCH).stacks()}


# -- causality -----------------------------------------------------------------------------
def suffix_variants(tokens: np.ndarray) -> np.ndarray:
    """Row 0: the base sequence; row k+1: tokens after position k replaced (k = 0..T−2);
    row T: only position 0 replaced (a positive control: information must flow forward)."""
    base = tokens[0]
    rows = [base]
    for k in range(T - 1):
        row = base.copy()
        row[k + 1 :] = (row[k + 1 :] + 1 + k) % TINY["vocab"]
        rows.append(row)
    row = base.copy()
    row[0] = (row[0] + 5) % TINY["vocab"]
    rows.append(row)
    return np.stack(rows).astype(np.int32)


@pytest.mark.parametrize("arch", ARCHS)
def test_causal_decoder_and_bidirectional_encoder_for_every_placement_structure(arch):
    # Decoder (decoder arch, and the decoder of encdec): causal self-attention masks keys s > t, norms
    # act per token and FFNs per position, so nothing after t reaches position t in any placement
    # (B2T's and ResiDual's extra paths are per-token too).
    # Encoder (encoder arch, and the source side of encdec): unmasked self-attention, so changing the
    # LAST source token changes position 0 (for encdec: the decoder's position 0, via cross-attention).
    # That sensitivity, and "a change at position 0 reaches the last position" for the decoder, show
    # the test would catch a missing or an over-eager mask. Parameters are jittered so that ReZero
    # (α = 0 at init: the identity) is not vacuously causal. One placement per structure: placements
    # of one structure differ by constants and init gains, which cannot move information between tokens.
    # The encoder arch: the structures its unmasked attention can meet differently from the decoder's
    # masked one (structural_signatures.attention_representatives); the rest of its stack is the
    # decoder's code, which the decoder rows run for every structure.
    placements = attention_representatives() if arch == "encoder" else PLACEMENT_REPRESENTATIVES
    cfgs = [cfg_of(p, arch=arch) for p in placements]
    base = np.asarray(TOKENS[:1])
    last_changed = base.copy()
    last_changed[0, -1] = (last_changed[0, -1] + 3) % TINY["vocab"]
    if arch == "encoder":
        tgt = src = jnp.asarray(np.concatenate([base, last_changed]))
    else:  # decoder rows: suffix variants; encdec adds one row whose source's last token changed
        tgt = suffix_variants(base)
        src = np.repeat(base, len(tgt), axis=0)
        if arch == "encdec":
            tgt, src = np.concatenate([tgt, base]), np.concatenate([src, last_changed])
        tgt, src = jnp.asarray(tgt), jnp.asarray(src)
    logits = jit_apply(
        [jitter(build_eager(c)) for c in cfgs],
        lambda m, i, tgt, src: m(*inputs_of(cfgs[i], tgt, src)),
        tgt,
        src,
        labels=[label(c) for c in cfgs],
    )
    for cfg, out in zip(cfgs, logits):
        out = np.asarray(out)
        if arch != "encoder":
            for k in range(T - 1):
                np.testing.assert_allclose(
                    out[k + 1, : k + 1], out[0, : k + 1], **SAME_F32, err_msg=f"{label(cfg)}, t={k}"
                )
            assert np.max(np.abs(out[T, -1] - out[0, -1])) > VISIBLE, f"{label(cfg)}: decoder ignores its past"
        if arch != "decoder":
            assert np.max(np.abs(out[-1, 0] - out[0, 0])) > VISIBLE, (
                f"{label(cfg)}: position 0 ignores a later source token"
            )


def test_causality_covers_every_placement_structure():
    # causality (above) runs one placement per structure, derived from the registry: a placement with
    # a new structure joins it by itself (on the encoder arch if it passes the attention anything).
    assert {PLACEMENT_SIGNATURES[p] for p in PLACEMENT_REPRESENTATIVES} == set(PLACEMENT_SIGNATURES.values())
    assert set(attention_representatives()) <= set(PLACEMENT_REPRESENTATIVES)


# -- Post-LN statistics ----------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_post_ln_stream_is_standardized(arch):
    # Post-LN: every stream value after a sublayer is LN(h + S(h)) with γ = 1, β = 0 at init, so per
    # token mean = 0 and variance = v/(v + ε) = 1 − ε/(v + ε) (v: variance of h + S(h), O(1) here).
    cfg = cfg_of("post", arch=arch)
    (out,) = jit_apply([build_eager(cfg)], lambda m, i, t: m.forward(*inputs_of(cfg, t)).sites, TOKENS)
    checked = 0
    for stack in out.values():
        for site in ("resid_mid", "resid_mid_cross", "resid_post"):
            if site not in stack["layers"]:
                continue
            z = np.asarray(stack["layers"][site], np.float64)  # (L, B, T, D)
            np.testing.assert_allclose(z.mean(-1), 0.0, atol=1e-6, err_msg=site)
            np.testing.assert_allclose(z.var(-1), 1.0, atol=1e-3, err_msg=site)
            checked += 1
    assert checked == {"encoder": 2, "decoder": 2, "encdec": 5}[arch]


# -- Pre-LN with zeroed output projections is the identity -------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_pre_ln_with_zero_output_projections_is_identity(arch):
    # Pre-LN: h ← h + S(LN(h)) and S ends with W_O (attention, cross-attention) or W2 (FFN); with
    # those zero (and no biases) every branch is exactly 0, so every stream site equals the
    # embedding bit for bit, whatever the other (jittered) parameters are.
    cfg = cfg_of("pre", arch=arch)
    model = jitter(build_eager(cfg))
    for stack in model.stacks.values():
        for proj in (stack.layers.attn.o, stack.layers.mlp.w2) + (
            (stack.layers.cross.o,) if stack.layers.cross else ()
        ):
            proj.weight[...] = jnp.zeros_like(proj.weight[...])
    (sites,) = jit_apply([model], lambda m, i, t: m.forward(*inputs_of(cfg, t)).sites, TOKENS)
    for name, stack in sites.items():
        embed = np.asarray(stack["stack"]["embed"])
        for site in ("resid_pre", "resid_mid", "resid_mid_cross", "resid_post"):
            if site in stack["layers"]:
                for layer, value in enumerate(np.asarray(stack["layers"][site])):
                    np.testing.assert_array_equal(value, embed, err_msg=f"{name} layer {layer} {site}")
        for site in ("attn_out", "cross_out", "mlp_out"):
            if site in stack["layers"]:
                assert not np.any(np.asarray(stack["layers"][site])), site


# -- the scanned stack equals a Python loop over its layers ------------------------------------
def wirings(stack) -> list:
    return [wiring for wiring, n in stack.segments for _ in range(n)]


def loop_stack(stack, x: jax.Array, memory: jax.Array | None) -> tuple[jax.Array, list[dict]]:
    """Stack.__call__ without the scan: slice layer l out of the stacked state and call the block the
    way the scan body does. Returns the stack output and each layer's recorded sites."""
    placement = PLACEMENTS[stack.spec.placement]
    if stack.embed_norm is not None:
        x = stack.embed_norm(x)
    stream = placement.start(x, stack.consts)
    graphdef, state = nnx.split(stack.layers)
    per_layer = []
    for layer, wiring in enumerate(wirings(stack)):
        block = nnx.merge(graphdef, jax.tree.map(lambda a: a[layer], state))
        taps = Taps()
        stream = block(stream, wiring=wiring, consts=stack.consts, memory=memory, taps=taps)
        per_layer.append(taps.sites)
    return placement.finish(stream, stack.final_norm, stack.consts), per_layer


def loop_forward(model: Transformer, *inputs: jax.Array) -> tuple[jax.Array, dict]:
    memory, sites = None, {}
    if "encoder" in model.stacks:
        memory, sites["encoder"] = loop_stack(model.stacks["encoder"], model.embed(inputs[0]), None)
        out = memory
    if "decoder" in model.stacks:
        out, sites["decoder"] = loop_stack(model.stacks["decoder"], model.embed(inputs[-1]), memory)
    head = model.embed.table[...].T if model.head is None else model.head[...]
    return out @ head, sites


SCAN_CASES = [
    ("mix", "decoder"),  # two scanned segments (Post-LN layer, then Pre-LN layers)
    ("residual", "decoder"),  # a second (dual) stream in the carry
    ("b2t", "decoder"),  # the layer input is used by the last sublayer
    ("admin", "encdec"),  # per-layer ω parameters; cross-attention memory
    ("hybrid", "encoder"),  # per-head q/k/v norm slots
    ("normformer", "encdec"),
    ("pre", "encdec"),
]


@pytest.mark.parametrize("placement, arch", SCAN_CASES)
def test_scanned_stack_equals_layer_loop(placement, arch):
    # jax.lax.scan over the stacked state applies the same block to the same per-layer slices in
    # order; only compiled-vs-eager rounding can differ. Every per-layer site is compared, not only
    # resid_post, so a mis-sliced parameter anywhere shows up.
    # mix at 4 layers: two 2-layer segments, so a segment's internal layer order matters too.
    cfg = cfg_of(placement, arch=arch, layers=4 if placement == "mix" else 2)
    model = jitter(build_eager(cfg))
    (scanned,) = jit_apply([model], lambda m, i, t: m.forward(*inputs_of(cfg, t)), TOKENS)
    logits, looped = loop_forward(model, *inputs_of(cfg))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(scanned.logits), **SAME_F32)
    for name, layer_sites in looped.items():
        scan_sites = scanned.sites[name]["layers"]
        assert set(scan_sites) == set(layer_sites[0]), name
        for layer, sites in enumerate(layer_sites):
            for site, value in sites.items():
                np.testing.assert_allclose(
                    np.asarray(value),
                    np.asarray(scan_sites[site][layer]),
                    **SAME_F32,
                    err_msg=f"{name} L{layer} {site}",
                )


def test_mix_segments_are_post_then_pre():
    # Mix-LN: the first floor(f·L) layers are Post-LN, the rest Pre-LN (checked independently of the
    # stack's own bookkeeping, which the loop above reuses).
    for layers, fraction, n_post in [(3, 0.5, 1), (4, 0.5, 2), (4, 0.25, 1), (2, 0.0, 0), (2, 1.0, 2)]:
        cfg = cfg_of("mix", layers=layers, mix_post_fraction=fraction)
        stack = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))).stacks["decoder"]
        got = [w["attn"] for w in wirings(stack)]
        assert got == [post_ln] * n_post + [pre_ln] * (layers - n_post), (layers, fraction)


# -- dropout -------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["decoder", "encdec"])
def test_dropout_determinism(arch):
    # Dropout draws its mask from dropout_key only: rate 0 or no key means no randomness at all
    # (the probes' forward passes are deterministic); rate > 0 with a key is random per key.
    off, on = cfg_of("pre", arch=arch), cfg_of("pre", arch=arch, dropout=0.3)
    keys = jax.random.split(jax.random.key(7), 2)

    def runs(m, i, t, keys):
        fwd = lambda key: m.forward(*inputs_of(off, t), dropout_key=key).logits
        return [fwd(keys[0]), fwd(keys[1]), fwd(keys[0]), fwd(None)]

    (a1, a2, a1_again, a_none), (b1, b2, b1_again, b_none) = jit_apply(
        [build_eager(off), build_eager(on)], runs, TOKENS, keys
    )
    # dropout = 0: the key is irrelevant.
    for x in (a2, a1_again, a_none):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(a1))
    # dropout > 0: same key same mask, another key another mask, both differ from no dropout.
    np.testing.assert_array_equal(np.asarray(b1_again), np.asarray(b1))
    assert np.max(np.abs(np.asarray(b1) - np.asarray(b2))) > VISIBLE
    assert np.max(np.abs(np.asarray(b1) - np.asarray(b_none))) > VISIBLE
    # dropout > 0 but no key: deterministic, and identical to the same parameters without dropout
    # (the init does not depend on the rate).
    np.testing.assert_array_equal(np.asarray(b_none), np.asarray(a_none))


# -- compile cost does not grow with depth -------------------------------------------------------
def count_eqns(jaxpr) -> int:
    """Equations of a jaxpr including every nested jaxpr (scan/while/cond bodies, pjit, custom_vjp)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = len(jaxpr.eqns)
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
                    total += count_eqns(sub)
    return total


def forward_jaxpr_size(cfg: ModelConfig) -> int:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
    return count_eqns(jax.make_jaxpr(lambda s, *t: nnx.merge(graphdef, s)(*t))(state, *inputs_of(cfg)))


DEPTH_CASES = [(p, "decoder") for p in PLACEMENTS] + [("b2t", "encdec"), ("mix", "encdec"), ("residual", "encoder")]


@pytest.mark.parametrize("placement, arch", DEPTH_CASES)
def test_forward_jaxpr_is_depth_independent(placement, arch):
    # The model's own layer loop (models.ops.ScanLoop) runs jax.lax.scan over stacked parameters:
    # depth is a leading array dimension, not more equations, so tracing and compiling cost the same at
    # L = 2 and L = 12. (Mix-LN has two scans at every depth >= 2; L=2 and L=12 both give 1+1 and 6+6
    # layer segments.) An execution plan's unrolled loop: tests/analysis/execution/test_layer_loop.py.
    small, large = (forward_jaxpr_size(cfg_of(placement, arch=arch, layers=n)) for n in (2, 12))
    assert small == large, (small, large)


@pytest.mark.parametrize("placement", ["admin", "pre"])
def test_init_jaxpr_is_depth_independent(placement):
    # init_state creates layers with nnx.vmap and Admin's profiling is a fori_loop whose trip count,
    # not body, depends on depth: building is depth-independent too (for scanned stacks).
    def size(layers):
        cfg = cfg_of(placement, arch="encdec", layers=layers)
        return count_eqns(jax.make_jaxpr(lambda k: init_state(cfg, k)[1])(jax.random.key(0)))

    assert size(2) == size(12)


def test_depth_count_is_sensitive():
    # count_eqns must see inside the scan: a per-layer Python loop (unrolled) grows with depth.
    def unrolled(layers):
        model = nnx.eval_shape(lambda: Transformer(cfg_of("pre", layers=layers), nnx.Rngs(0)))
        graphdef, state = nnx.split(model)
        return count_eqns(jax.make_jaxpr(lambda s, t: loop_forward(nnx.merge(graphdef, s), t)[0])(state, TOKENS))

    assert unrolled(3) > unrolled(2)
    # ... and it descends into nested jaxprs (the scan body holds nearly all of the forward).
    cfg = cfg_of("pre")
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
    closed = jax.make_jaxpr(lambda s, t: nnx.merge(graphdef, s)(t))(state, TOKENS)
    assert count_eqns(closed) > 2 * len(closed.jaxpr.eqns)


# -- reduced precision ------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["layernorm", "dyt"])
def test_bfloat16_model_runs(norm):
    # dtype="bfloat16" is a documented choice; logits come back in float32, finite. Runs under the
    # suite's strict promotion, so any implicit bf16/f32 mix in the model is caught.
    cfg = cfg_of("pre", norm, dtype="bfloat16")
    (logits,) = jit_apply([build_eager(cfg)], lambda m, i, t: m(t), TOKENS)
    assert logits.dtype == jnp.float32 and logits.shape == (B, T, cfg.vocab)
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_build_model_matches_its_parts():
    # build_model (jit-compiled init_state) is the public path; the tests above construct eagerly.
    # Same structure, and logits of the right shape, finite, for one profiled placement.
    cfg = cfg_of("admin")
    model = models.build_model(cfg, seed=3)
    eager = build_eager(cfg)
    assert jax.tree.structure(nnx.state(model)) == jax.tree.structure(nnx.state(eager))
    omega = np.asarray(model.stacks["decoder"].layers.extra["attn"]["omega"][...])
    assert not np.allclose(omega, 1.0), "Admin ω was profiled (not left at its ω = 1 start)"
    (logits,) = jit_apply([model], lambda m, i, t: m(t), TOKENS)
    assert logits.shape == (B, T, cfg.vocab) and bool(jnp.all(jnp.isfinite(logits)))
