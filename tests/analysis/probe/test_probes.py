"""The probe program (analysis.probe.probes) against independent recomputations.

Every probe is recomputed here from first principles on the same model and batch, by a route that
does not go through analysis.probe.probes:

* act_grad_norm: a central finite difference of the loss along a direction added at one site
  (float64, every placement structure on the decoder, those that reach inside attention on the
  encoder), and the norm of jax.grad with respect to that site's perturbation.
* param_grad_norm: jax.grad of loss_from_logits on `model(*inputs)` (the plain call, no probe
  sites), sliced per layer and summed per parameter group in numpy.
* ln_jacobian_gain: the explicit Jacobian (jax.jacrev of the norm module, token by token) applied to
  the upstream gradient at the norm's output; ln_gain_estimate: 1/sqrt(var + eps) in numpy.
* cos_adjacent / cos_to_last / cka: analysis.probe.similarity on the forward's sites; act_norm and
  update_ratio in numpy.
* attn_entropy: closed forms for uniform attention (q and k weights zeroed).
* output_change: the parameter move and the normalized output difference redone by hand.
* hessian_top_eig: the dense Hessian's eigenvalues (numpy.linalg.eigvalsh).
* the seed plumbing of analysis.probe.api: vmapped seeds = one seed at a time = probe_model.

Compile time is the budget (each distinct config/probe-set/shape compiles for seconds on CPU), so a
few tiny configs are shared through module-scoped fixtures.
"""

from __future__ import annotations

import dataclasses

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.flatten_util import ravel_pytree

from analysis.execution.ops import PlannedLoop
from analysis.probe import similarity
from analysis.probe.api import _model_program, _seed_groups, probe_at_init, probe_model, study_plan
from analysis.probe.loss import loss_from_logits, model_inputs, random_batch
from analysis.probe.probes import CHEAP_PROBES, PROBES, ProbeConfig, probe_program, probe_program_with_grads
from models import ARCHS, PLACEMENTS, ModelConfig, ModelOps, Transformer, build_model, init_state
from models.block import sublayer_input_site
from tests.models.structural_signatures import (
    PLACEMENT_REPRESENTATIVES,
    PLACEMENT_SIGNATURES,
    attention_arguments,
    attention_representatives,
)

# Tiny shared sizes (every distinct shape compiles fresh).
SMALL = dict(d_model=16, heads=2, d_ff=32, vocab=32)
LAYERS = 2
BATCH, LENGTH = 2, 6
SRC_LENGTH = 5  # encdec fixture: a source length != target length, so cross-attention is visibly S-wide
# Placement options that make every constant visible (as in tests/models/test_placements_reference.py).
UNROLLED = ModelOps(layer_loop=PlannedLoop(unroll_layers=18))  # an execution plan's unrolled loop (zero perturbations)
OPTIONS = dict(mix_post_fraction=0.5, rsln_steps=3, skip_lambda=1.7, residual_scale=0.5)

# --- tolerances ---------------------------------------------------------------------------------
# Central difference in float64 with ε = 1e-6: truncation O(ε²·ℒ''') ~ 1e-12, rounding ~ 1e-16/ε
# ~ 1e-10 relative to an O(0.1-1) slope; observed ≤ 3e-9. A ReLU kink crossed within ±ε would show
# up as an O(1e-3) error, so 1e-4 separates "correct gradient" from any real bug.
FD_RTOL = 1e-4
FD_EPS = 1e-6
# Two float64 evaluations of the same gradient norm by different programs.
F64_RTOL = 1e-10
# float32 quantities recomputed by another route (numpy in float64 from float32 sites, or another
# jitted program with different fusion): a few hundred ulps at most.
F32_RTOL = 1e-5
F32_ATOL = 1e-6
# The same program run vmapped over seeds vs one seed at a time vs lax.map chunks vs probe_model:
# XLA batches the matmuls differently, so not bit-identical: observed ≤ 1.2e-7 relative (1 ulp) on
# O(1) values and ≤ 5.4e-7 absolute on near-zero ones (cka_null, cosines of ~0).
SEED_RTOL = 1e-6
SEED_ATOL = 1e-6
# output_change for a step far below float32 resolution of the parameters: the output cannot move.
TINY_LR, TINY_CHANGE = 1e-9, 1e-8


def _cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**SMALL, "layers": LAYERS, **kw})


def _rows(df: pd.DataFrame, quantity: str, stack: str, site: str) -> pd.DataFrame:
    rows = df[(df["quantity"] == quantity) & (df["stack"] == stack) & (df["site"] == site)]
    assert len(rows), f"no rows for {quantity}/{stack}/{site}"
    return rows


def _profile(df: pd.DataFrame, quantity: str, stack: str, site: str) -> np.ndarray:
    """Per-layer values (layer 0 first) of one seed's frame."""
    rows = _rows(df, quantity, stack, site).sort_values("layer")
    assert (rows["layer"].to_numpy() == np.arange(len(rows))).all(), rows
    return rows["value"].to_numpy()


def _scalar(df: pd.DataFrame, quantity: str, stack: str, site: str) -> float:
    rows = _rows(df, quantity, stack, site)
    assert len(rows) == 1 and rows["layer"].iloc[0] == -1, rows
    return float(rows["value"].iloc[0])


def _close(actual, expected, what: str, rtol=F32_RTOL, atol=F32_ATOL) -> None:
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


# ================================================================================================
# 1. act_grad_norm = central finite differences (float64, every placement structure)
# ================================================================================================
# (stack, site, layer) triples perturbed per arch: the stream entering the bottom layer and a
# stream site inside the top layer (for encdec: the encoder bottom, reached only through
# cross-attention, and the decoder stream after cross-attention).
FD_SITES = {
    "decoder": (("decoder", "resid_pre", 0), ("decoder", "resid_mid", LAYERS - 1)),
    "encoder": (("encoder", "resid_pre", 0), ("encoder", "resid_mid", LAYERS - 1)),
    "encdec": (("encoder", "resid_pre", 0), ("decoder", "resid_mid_cross", LAYERS - 1)),
}
# One placement per structure on the decoder (tests/models/structural_signatures.py: placements of one
# structure record and perturb the same sites along the same code path, differing by constants and
# init gains, which jax.grad differentiates like any other number), and one encdec.
# The encoder differs from the decoder only inside self-attention (no causal mask) and in its loss on
# `targets`: the stream wiring, norms, per-layer parameters, scan and site taps around the attention
# branch are the same code in both stacks, and the decoder grid differentiates every structure of
# them through it. So the encoder runs Pre-LN (the plain attention call, and the encoder's loss) and
# every structure whose blocks pass something into the attention (structural_signatures.
# attention_arguments: per-head q/k/v norms, head gains, a norm before W_O, q/k and score scales),
# whose gradient meets the unmasked scores; a new structure of that kind joins by itself. Each case
# is one float64 compile: the fast tier's encoder cases are Pre-LN and the per-head q/k/v norms.
ENCODER_FD = attention_representatives()
FAST_ENCODER = ("pre", "hybrid")
FD_CASES = (
    [pytest.param("decoder", p, id=f"decoder-{p}") for p in sorted(PLACEMENT_REPRESENTATIVES)]
    + [
        pytest.param("encoder", p, id=f"encoder-{p}", marks=() if p in FAST_ENCODER else pytest.mark.slow)
        for p in sorted(ENCODER_FD)
    ]
    + [pytest.param("encdec", "b2t", id="encdec-b2t")]
)


def _fd_program(cfg: ModelConfig, triples):
    """One jitted program: init, ∂ℒ/∂site by jax.grad, ℒ(site ± εv), and the probe's act_grad_norm."""

    def run(seed, batch, vkey):
        graphdef, state = init_state(cfg, seed, UNROLLED)
        inputs = model_inputs(cfg, batch)

        def loss(perturb):
            out = nnx.merge(graphdef, state).forward(*inputs, perturb=perturb)
            return loss_from_logits(cfg, out.logits, batch)

        shapes = jax.eval_shape(lambda: nnx.merge(graphdef, state).forward(*inputs).sites)
        zeros = {}
        for stack, site, _ in triples:  # one backward pass for all perturbed sites
            zeros.setdefault(stack, {"layers": {}})["layers"][site] = jnp.zeros(
                shapes[stack]["layers"][site].shape, jnp.float64
            )
        grads = jax.grad(loss)(zeros)
        results = []
        for i, (stack, site, layer) in enumerate(triples):
            full = shapes[stack]["layers"][site].shape  # (L, B, T, D)
            one_site = lambda delta: {stack: {"layers": {site: delta}}}
            grad = grads[stack]["layers"][site]
            g = grad[layer]
            r = jax.random.normal(jax.random.fold_in(vkey, i), g.shape, jnp.float64)
            # v = ĝ + r̂: the slope along v is O(‖g‖) (a meaningful relative check) and the random
            # half probes directions the gradient itself does not point to.
            v = jnp.zeros(full, jnp.float64).at[layer].set(g / jnp.linalg.norm(g) + r / jnp.linalg.norm(r))
            fd = (loss(one_site(FD_EPS * v)) - loss(one_site(-FD_EPS * v))) / (2 * FD_EPS)
            results.append({"fd": fd, "ad": jnp.vdot(grad, v), "norm": jnp.linalg.norm(g)})
        # the probe in both forms (analysis.probe.probes._site_gradient_points): zero perturbations in
        # the unrolled stacks of this small model, ‖∂ℒ/∂site‖² taps in the same model scanned
        pcfg = ProbeConfig(probes=("act_grad_norm",))
        probed = probe_program(graphdef, state, batch, cfg, pcfg)
        scan_graphdef = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))[0]  # the model's scan
        probed_scanned = probe_program(scan_graphdef, state, batch, cfg, pcfg)
        return results, probed["act_grad_norm"], probed_scanned["act_grad_norm"]

    return jax.jit(run)


@pytest.mark.parametrize("arch, placement", FD_CASES)
def test_act_grad_norm_matches_finite_differences(arch: str, placement: str) -> None:
    """⟨∂ℒ/∂site, v⟩ from jax.grad = (ℒ(site + εv) − ℒ(site − εv))/2ε, and the probe's norm = ‖∂ℒ/∂site‖.

    float64 (x64 on only inside this test). Standard dtype promotion inside: the models promote with
    jnp.promote_types(x.dtype, float32), which strict mode refuses for float64 (see
    test_non_float32_forward_under_strict_promotion).
    """
    assert not jax.config.jax_enable_x64
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        cfg = _cfg(arch=arch, placement=placement, dtype="float64", **OPTIONS)
        batch = random_batch(cfg, jax.random.key(1), BATCH, LENGTH)
        triples = FD_SITES[arch]
        results, probed, probed_scanned = jax.device_get(
            _fd_program(cfg, triples)(jnp.uint32(0), batch, jax.random.key(2))
        )
    assert not jax.config.jax_enable_x64, "x64 mode leaked out of the test"
    for (stack, site, layer), r in zip(triples, results):
        what = f"{arch}/{placement} {stack}.{site}[layer {layer}]"
        assert np.isfinite(r["fd"]) and abs(r["ad"]) > 1e-3, f"{what}: degenerate slope {r}"
        np.testing.assert_allclose(r["fd"], r["ad"], rtol=FD_RTOL, err_msg=f"{what}: finite difference vs jax.grad")
        for form, norms in (("unrolled", probed), ("scanned", probed_scanned)):
            reported = norms[stack]["layers"][site]
            assert reported.dtype == np.float64, f"{what}: probe computed in {reported.dtype} ({form})"
            np.testing.assert_allclose(
                reported[layer], r["norm"], rtol=F64_RTOL, err_msg=f"{what}: probe norm ({form})"
            )


# Every placement on the decoder: a constant's type (a numpy float64 scalar is not weakly typed) can
# break strict promotion, and constants are what placements of one structure differ by. encdec (the
# cross-attention wiring, which only encdec runs) with one placement per structure; the encoder,
# whose stack runs the decoder's code but for the unmasked attention and its loss, with the
# placements of the encoder's finite-difference grid (ENCODER_FD, above: why).
PROMOTION_CASES = (
    [("decoder", p) for p in sorted(PLACEMENTS)]
    + [("encoder", p) for p in sorted(ENCODER_FD)]
    + [("encdec", p) for p in sorted(PLACEMENT_REPRESENTATIVES)]
)


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
@pytest.mark.parametrize("arch, placement", PROMOTION_CASES)
def test_non_float32_forward_under_strict_promotion(dtype: str, placement: str, arch: str) -> None:
    """bfloat16 / float64 models trace under strict promotion, so no op silently upcasts or mixes
    precisions. Regression: reductions upcast with jnp.promote_types(x.dtype, float32), which raises
    under strict promotion for both dtypes. Tracing only, nothing compiles."""
    with jax.enable_x64(dtype == "float64"), jax.numpy_dtype_promotion("strict"):
        cfg = _cfg(dtype=dtype, placement=placement, arch=arch)
        tokens = jax.ShapeDtypeStruct((BATCH, LENGTH), jnp.int32)
        batch = {"src": tokens, "tgt": tokens} if arch == "encdec" else {"tokens": tokens, "targets": tokens}
        graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))

        def loss(s, b):  # forward and backward: the gradient path has its own casts
            model = nnx.merge(graphdef, s)
            return loss_from_logits(cfg, model.forward(*model_inputs(cfg, b)).logits, b)

        grads = jax.eval_shape(jax.grad(loss), state, batch)
    assert all(g.dtype == jnp.dtype(dtype) for g in jax.tree.leaves(grads) if jnp.issubdtype(g.dtype, jnp.floating))


def test_the_placement_tiers_cover_every_placement_structure() -> None:
    # Derived from the registry, so a placement with a new structure joins both tiers by itself.
    every = set(PLACEMENT_SIGNATURES.values())
    assert {PLACEMENT_SIGNATURES[c.values[1]] for c in FD_CASES if c.values[0] == "decoder"} == every
    # the encoder: every attention call any placement makes, and every structure that passes the
    # attention anything (Pre-LN for the plain call)
    encoder = {c.values[1] for c in FD_CASES if c.values[0] == "encoder"}
    assert {attention_arguments(p) for p in encoder} == {attention_arguments(p) for p in PLACEMENTS}
    assert {PLACEMENT_SIGNATURES[p] for p in PLACEMENTS if attention_arguments(p)} <= {
        PLACEMENT_SIGNATURES[p] for p in encoder
    }
    assert "pre" in encoder and not attention_arguments("pre")
    assert {p for a, p in PROMOTION_CASES if a == "decoder"} == set(PLACEMENTS)
    assert {p for a, p in PROMOTION_CASES if a == "encoder"} == encoder
    assert {PLACEMENT_SIGNATURES[p] for a, p in PROMOTION_CASES if a == "encdec"} == every
    assert {a for a, _ in PROMOTION_CASES} == set(ARCHS)


@pytest.mark.parametrize("dtype", ["bfloat16", "float64"])
def test_every_probe_traces_for_non_float32_models(dtype: str) -> None:
    """Every probe traces for bfloat16 and float64 models under strict promotion, with results in the
    model's dtype or wider. Regression: hessian_top_eig's power-iteration carry was a float32 zero
    whatever the model dtype (a scan carry type mismatch). Tracing only, nothing compiles."""
    with jax.enable_x64(dtype == "float64"), jax.numpy_dtype_promotion("strict"):
        cfg = _cfg(dtype=dtype)
        graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
        batch = {"tokens": jax.ShapeDtypeStruct((BATCH, LENGTH), jnp.int32)}
        pcfg = ProbeConfig(probes=tuple(PROBES))
        out = jax.eval_shape(lambda s, b: probe_program(graphdef, s, b, cfg, pcfg), state, batch)
    assert set(PROBES) <= set(out)
    assert out["hessian_top_eig"]["model"]["stack"]["loss"].dtype == jnp.dtype(dtype)
    assert out["act_grad_norm"]["decoder"]["layers"]["resid_pre"].dtype == jnp.dtype(
        "float64" if dtype == "float64" else "float32"
    )


# ================================================================================================
# Shared encdec fixture: Post-LN encoder, Pre-LN decoder (cross-attention, final norm), 2 layers.
# ================================================================================================
ENCDEC = _cfg(arch="encdec", placement="pre", enc_placement="post")


def _encdec_batch(cfg: ModelConfig) -> dict[str, jax.Array]:
    rng = np.random.default_rng(7)
    return {
        "src": jnp.asarray(rng.integers(0, cfg.vocab, (BATCH, SRC_LENGTH)), jnp.int32),
        "tgt": jnp.asarray(rng.integers(0, cfg.vocab, (BATCH, LENGTH)), jnp.int32),
    }


def _norm_out_sites(sites: dict) -> dict:
    """Zero perturbations at every norm output (layer and stack level) of a forward's sites."""
    return {
        stack: {
            level: {k: jnp.zeros_like(v) for k, v in s[level].items() if k.endswith("_norm_out")}
            for level in ("layers", "stack")
        }
        for stack, s in sites.items()
    }


@pytest.fixture(scope="module")
def encdec():
    """Model, batch, probe frame (all cheap probes) and an independent reference pass."""
    cfg = ENCDEC
    model = build_model(cfg, 0)
    batch = _encdec_batch(cfg)
    graphdef, state = nnx.split(model)
    inputs = model_inputs(cfg, batch)

    @jax.jit
    def reference(state):
        # Parameter gradient through the plain call (no probe sites at all).
        param_grads = jax.grad(lambda s: loss_from_logits(cfg, nnx.merge(graphdef, s)(*inputs), batch))(state)
        forward = lambda p: nnx.merge(graphdef, state).forward(*inputs, perturb=p)
        out = forward(None)
        norm_out_grads = jax.grad(lambda p: loss_from_logits(cfg, forward(p).logits, batch))(_norm_out_sites(out.sites))
        return {"param_grads": param_grads, "sites": out.sites, "stats": out.stats, "norm_out_grads": norm_out_grads}

    @jax.jit
    def stack_out(state):  # the top stack's output, for output_change
        return nnx.merge(graphdef, state).forward(*inputs).sites["decoder"]["stack"]["stack_out"]

    ref = jax.device_get(reference(state))
    df = probe_model(model, batch, CHEAP_PROBES, seed=0)
    return dict(cfg=cfg, model=model, batch=batch, graphdef=graphdef, state=state, ref=ref, df=df, stack_out=stack_out)


# ================================================================================================
# 2. param_grad_norm = norms of a direct jax.grad
# ================================================================================================
def _squares_per_layer(tree) -> np.ndarray:
    return sum(
        np.sum(np.square(np.asarray(a, np.float64)), axis=tuple(range(1, a.ndim))) for a in jax.tree.leaves(tree)
    )


def _global(tree) -> float:
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in jax.tree.leaves(tree))))


def test_param_grad_norm_matches_direct_grad(encdec) -> None:
    """Per layer: leaves ("mlp.w2.weight", "attn.q.weight", "cross.v.weight", "norms.mlp.ln.gain"), group
    totals ("attn", "cross", "mlp", "norms", "block"); per stack: "final_norm"; model: "embed", "head"."""
    df, grads = encdec["df"], nnx.to_pure_dict(encdec["ref"]["param_grads"])
    checked = 0
    for stack in ("encoder", "decoder"):
        layers = grads["stacks"][stack]["layers"]
        expected = {
            "mlp.w2.weight": _squares_per_layer(layers["mlp"]["w2"]["weight"]),
            "mlp.w1.weight": _squares_per_layer(layers["mlp"]["w1"]["weight"]),
            "attn.q.weight": _squares_per_layer(layers["attn"]["q"]["weight"]),
            "attn.o.weight": _squares_per_layer(layers["attn"]["o"]["weight"]),
            "norms.mlp.ln.gain": _squares_per_layer(layers["norms"]["mlp"]["ln"]["gain"]),
            "attn": _squares_per_layer(layers["attn"]),
            "mlp": _squares_per_layer(layers["mlp"]),
            "norms": _squares_per_layer(layers["norms"]),
            "block": _squares_per_layer(layers),
        }
        if stack == "decoder":
            expected["cross"] = _squares_per_layer(layers["cross"])
            expected["cross.v.weight"] = _squares_per_layer(layers["cross"]["v"]["weight"])
        # the groups partition the block
        parts = sum(expected[g] for g in ("attn", "cross", "mlp", "norms") if g in expected)
        _close(parts, expected["block"], f"{stack}: groups do not add up to the block")
        for site, squares in expected.items():
            _close(_profile(df, "param_grad_norm", stack, site), np.sqrt(squares), f"param_grad_norm {stack}/{site}")
            checked += 1
        assert _profile(df, "param_grad_norm", stack, "mlp.w2.weight").shape == (LAYERS,)
    # stack level: the decoder's final norm (Pre-LN); the Post-LN encoder has none
    _close(
        _scalar(df, "param_grad_norm", "decoder", "final_norm"),
        _global(grads["stacks"]["decoder"]["final_norm"]),
        "decoder final_norm",
    )
    assert df[(df.quantity == "param_grad_norm") & (df["stack"] == "encoder") & (df.layer == -1)].empty
    # model level: shared embedding and output head
    for site in ("embed", "head"):
        _close(_scalar(df, "param_grad_norm", "model", site), _global(grads[site]), f"model/{site}")
    assert checked >= 18


def test_probe_program_with_grads_returns_the_plain_gradient(encdec) -> None:
    """The training-step variant hands back ∂ℒ/∂θ from its single backward pass: equal to a direct
    jax.grad of the plain call (no probe sites), with the same probe results as probe_program."""
    cfg, graphdef, state, batch = encdec["cfg"], encdec["graphdef"], encdec["state"], encdec["batch"]
    pcfg = ProbeConfig(probes=("act_norm",))  # no gradient probe: the gradients must be computed anyway
    result, grads = jax.jit(lambda s: probe_program_with_grads(graphdef, s, batch, cfg, pcfg))(state)
    alone = jax.jit(lambda s: probe_program(graphdef, s, batch, cfg, pcfg))(state)
    expected = jax.tree.leaves(encdec["ref"]["param_grads"])
    assert len(jax.tree.leaves(grads)) == len(expected)
    for got, want in zip(jax.tree.leaves(grads), expected):
        np.testing.assert_allclose(got, want, rtol=F32_RTOL, atol=F32_ATOL)
    for got, want in zip(jax.tree.leaves(result), jax.tree.leaves(alone)):
        np.testing.assert_allclose(got, want, rtol=F32_RTOL, atol=F32_ATOL)


# ================================================================================================
# 3. ln_jacobian_gain = ‖J_normᵀ g‖/‖g‖ with the explicit Jacobian; ln_gain_estimate = mean 1/σ
# ================================================================================================
def _norm_module(model, stack: str, pair: str):
    """The norm behind site pair `pair` ("attn_ln"; "final" for final_norm_in/out) and whether it is per layer."""
    if pair == "final":
        return model.stacks[stack].final_norm, False
    kind, slot = pair.split("_", 1)
    return model.stacks[stack].layers.norms[kind][slot], True


def _explicit_jt_g(norm, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """J(x_t)ᵀ g_t per token, J = jax.jacrev(norm) on a single token (D,) -> (D,)."""
    xs, gs = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    jacobians = np.stack([np.asarray(jax.jacrev(norm)(jnp.asarray(t))) for t in xs])  # (N, D_out, D_in)
    return np.einsum("noi,no->ni", jacobians.astype(np.float64), gs.astype(np.float64))


def _ln_cases(ref) -> list[tuple[str, str, int]]:
    cases = []
    for stack, s in ref["sites"].items():
        for level in ("layers", "stack"):
            for k in s[level]:
                if k.endswith("_norm_in"):
                    pair = k[: -len("_norm_in")]
                    layers = range(s[level][k].shape[0]) if level == "layers" else [-1]
                    cases += [(stack, pair, layer) for layer in layers]
    return cases


def test_ln_jacobian_gain_matches_explicit_jacobian(encdec) -> None:
    """Every norm of both stacks (encoder Post-LN, decoder Pre-LN + final norm), every layer."""
    df, ref, model, eps = encdec["df"], encdec["ref"], encdec["model"], encdec["cfg"].norm_eps
    cases = _ln_cases(ref)
    pairs = {(s, p) for s, p, _ in cases}
    assert {("encoder", "attn_ln"), ("encoder", "mlp_ln"), ("decoder", "cross_ln"), ("decoder", "final")} <= pairs
    for stack, pair, layer in cases:
        level = "stack" if layer == -1 else "layers"
        pick = (lambda a: a) if layer == -1 else (lambda a: a[layer])
        x = pick(ref["sites"][stack][level][f"{pair}_norm_in"])
        g = pick(ref["norm_out_grads"][stack][level][f"{pair}_norm_out"])
        norm, per_layer = _norm_module(model, stack, pair)
        if per_layer:  # the scanned stack holds every layer's norm parameters on a leading axis
            graphdef, state = nnx.split(norm)
            norm = nnx.merge(graphdef, jax.tree.map(lambda a: a[layer], state))
        jt_g = _explicit_jt_g(norm, x, g)
        gain = np.linalg.norm(jt_g) / np.linalg.norm(g.astype(np.float64))
        x64 = x.astype(np.float64)
        estimate = np.mean(1.0 / np.sqrt(np.var(x64, axis=-1) + eps))
        if layer == -1:
            got_gain, got_est = (_scalar(df, q, stack, pair) for q in ("ln_jacobian_gain", "ln_gain_estimate"))
        else:
            got_gain, got_est = (_profile(df, q, stack, pair)[layer] for q in ("ln_jacobian_gain", "ln_gain_estimate"))
        what = f"{stack}/{pair}[layer {layer}]"
        _close(got_gain, gain, f"ln_jacobian_gain {what}", rtol=1e-4)  # ratio of two float32 backward norms
        _close(got_est, estimate, f"ln_gain_estimate {what}")


def test_post_ln_gain_bounded_by_inverse_sigma(encdec) -> None:
    """Post-LN (the encoder here): J = (1/sqrt(σ²+ε))·(orthogonal projection), so per token
    ‖J_tᵀ g_t‖ ≤ ‖g_t‖/sqrt(σ_t²+ε) exactly (B-f in docs/calibration.md); summed over tokens, the layer-level gain is at
    most the ‖g_t‖²-weighted RMS of 1/sqrt(σ_t²+ε).

    The probe's ln_gain_estimate is the *plain* token mean of 1/sqrt(σ_t²+ε), which does not bound the
    gain when σ_t varies across tokens and the small-σ tokens carry more gradient: here (sinusoidal
    positions, encoder layer 0 attn LN) the gain is 0.85 against an estimate of 0.71. So "gain ≤
    estimate" is not asserted; the values are printed.
    """
    df, ref, model, eps = encdec["df"], encdec["ref"], encdec["model"], encdec["cfg"].norm_eps
    lines = []
    for pair in ("attn_ln", "mlp_ln"):
        gains = _profile(df, "ln_jacobian_gain", "encoder", pair)
        estimates = _profile(df, "ln_gain_estimate", "encoder", pair)
        for layer in range(LAYERS):
            x = ref["sites"]["encoder"]["layers"][f"{pair}_norm_in"][layer].astype(np.float64)
            g = ref["norm_out_grads"]["encoder"]["layers"][f"{pair}_norm_out"][layer].astype(np.float64)
            graphdef, state = nnx.split(model.stacks["encoder"].layers.norms[pair.split("_")[0]]["ln"])
            norm = nnx.merge(graphdef, jax.tree.map(lambda a: a[layer], state))
            jt_g = np.linalg.norm(_explicit_jt_g(norm, x, g), axis=-1)
            g_t = np.linalg.norm(g.reshape(-1, g.shape[-1]), axis=-1)
            inv_sigma = 1.0 / np.sqrt(np.var(x, axis=-1).reshape(-1) + eps)
            assert (jt_g <= g_t * inv_sigma * (1 + 1e-5) + 1e-7).all(), f"{pair}[{layer}]: per-token bound violated"
            weighted = np.sqrt(np.sum(g_t**2 * inv_sigma**2) / np.sum(g_t**2))
            lines.append(
                f"encoder {pair}[{layer}]: gain {gains[layer]:.4f} <= weighted 1/σ {weighted:.4f}; "
                f"plain-mean estimate {estimates[layer]:.4f}"
            )
            assert gains[layer] <= weighted * (1 + 1e-5), "\n".join(lines)
            assert gains[layer] <= inv_sigma.max() * (1 + 1e-5)
    print("\n".join(lines))


# ================================================================================================
# 4. Similarity, act_norm, update_ratio against the forward's sites
# ================================================================================================
def test_similarity_probes_match_analysis_similarity(encdec) -> None:
    df, sites = encdec["df"], encdec["ref"]["sites"]
    for stack in ("encoder", "decoder"):
        layers = sites[stack]["layers"]
        for site in ("resid_pre", "resid_post"):
            h = jnp.asarray(layers[site])
            _close(
                _profile(df, "cos_adjacent", stack, site),
                similarity.stack_cosine_adjacent(h),
                f"cos_adjacent {stack}/{site}",
            )
            _close(
                _profile(df, "cos_to_last", stack, site),
                similarity.stack_cosine_to_last(h),
                f"cos_to_last {stack}/{site}",
            )
        assert len(_profile(df, "cos_adjacent", stack, "resid_pre")) == LAYERS - 1
        expected = np.asarray(similarity.stack_cka(jnp.asarray(layers["resid_post"]), debiased=True))
        rows = _rows(df, "cka", stack, "resid_post")
        got = np.full((LAYERS, LAYERS), np.nan)
        got[rows["layer"].to_numpy(), rows["other_layer"].to_numpy()] = rows["value"].to_numpy()
        _close(got, expected, f"cka {stack}", atol=1e-5)
        assert np.allclose(np.diag(got), 1.0, atol=1e-5)


def test_act_norm_is_mean_token_rms(encdec) -> None:
    df, sites = encdec["df"], encdec["ref"]["sites"]
    n = 0
    for stack, s in sites.items():
        for site, a in s["layers"].items():
            a = a.astype(np.float64)
            expected = np.sqrt(np.mean(a**2, axis=-1)).reshape(a.shape[0], -1).mean(axis=1)
            _close(_profile(df, "act_norm", stack, site), expected, f"act_norm {stack}/{site}")
            n += 1
        for site, a in s["stack"].items():
            expected = np.sqrt(np.mean(a.astype(np.float64) ** 2, axis=-1)).mean()
            _close(_scalar(df, "act_norm", stack, site), expected, f"act_norm {stack}/{site}")
            n += 1
    assert n > 20


@pytest.mark.parametrize(
    "placement, dtype, rtol",
    [
        ("pre", "float64", F64_RTOL),
        ("post", "float64", F64_RTOL),
        ("normformer", "float64", F64_RTOL),
        ("pre", "bfloat16", 1e-6),
        ("residual", "bfloat16", 1e-6),
    ],
)
def test_in_layer_summaries_equal_reductions_of_the_stacked_sites(placement: str, dtype: str, rtol: float) -> None:
    """act_norm, update_ratio and ln_gain_estimate are reduced inside each layer (Stack's `summarize`):
    in a scanned encoder and an unrolled decoder of one model they equal numpy's reductions of the
    forward's stacked sites, and the forward without `summarize` returns no summary. bfloat16: the
    reductions read the recorded (rounded) bfloat16 sites, not XLA's unrounded float32 values of a
    fused residual add (5e-4 off before `_at_recorded_precision`)."""
    with jax.enable_x64(dtype == "float64"):
        cfg = ModelConfig(arch="encdec", placement=placement, enc_layers=4, dec_layers=2, dtype=dtype, **SMALL)
        graphdef, state = init_state(cfg, jax.random.key(0), ModelOps(layer_loop=PlannedLoop(unroll_layers=3)))
        batch = random_batch(cfg, jax.random.key(1), BATCH, LENGTH)
        probes = ("act_norm", "update_ratio", "ln_jacobian_gain")
        got = jax.jit(lambda st: probe_program(graphdef, st, batch, cfg, ProbeConfig(probes=probes)))(state)
        out = jax.jit(lambda st: nnx.merge(graphdef, st).forward(*model_inputs(cfg, batch)))(state)
    assert all("summary" not in st["layers"] for st in out.stats.values())
    _close = lambda a, b, what: np.testing.assert_allclose(
        np.asarray(a, np.float64), b, rtol=rtol, atol=0, err_msg=what
    )
    checked = 0
    for stack, s in out.sites.items():
        layers = {k: np.asarray(v).astype(np.float64) for k, v in s["layers"].items()}
        token_mean = lambda per_token: per_token.reshape(per_token.shape[0], -1).mean(axis=1)
        for site, a in layers.items():
            _close(
                got["act_norm"][stack]["layers"][site],
                token_mean(np.sqrt(np.mean(a**2, axis=-1))),
                f"act_norm {stack}/{site}",
            )
            checked += 1
        for pair, estimate in got["ln_gain_estimate"][stack]["layers"].items():
            x = layers[f"{pair}_norm_in"]
            _close(
                estimate, token_mean(1 / np.sqrt(np.var(x, axis=-1) + cfg.norm_eps)), f"ln_gain_estimate {stack}/{pair}"
            )
            checked += 1
        kinds = tuple(k for k in ("attn", "cross", "mlp") if f"{k}_out" in layers)
        assert set(got["update_ratio"][stack]["layers"]) == set(kinds)
        for kind, ratio in got["update_ratio"][stack]["layers"].items():
            branch, stream = layers[f"{kind}_out"], layers[sublayer_input_site(kinds, kind)]
            expected = token_mean(np.linalg.norm(branch, axis=-1) / np.linalg.norm(stream, axis=-1))
            _close(ratio, expected, f"update_ratio {stack}/{kind}")
            checked += 1
    assert checked > 20


def test_update_ratio_is_branch_over_stream(encdec) -> None:
    """mean_t ‖{kind}_out_t‖ / ‖stream entering the sublayer_t‖, the stream site written out by hand."""
    df, sites = encdec["df"], encdec["ref"]["sites"]
    inputs = {
        "encoder": {"attn": "resid_pre", "mlp": "resid_mid"},
        "decoder": {"attn": "resid_pre", "cross": "resid_mid", "mlp": "resid_mid_cross"},
    }
    for stack, kinds in inputs.items():
        layers = sites[stack]["layers"]
        assert {r for r in _rows(df, "update_ratio", stack, "attn")["site"]} == {"attn"}
        for kind, stream in kinds.items():
            out, x = layers[f"{kind}_out"].astype(np.float64), layers[stream].astype(np.float64)
            per_token = np.linalg.norm(out, axis=-1) / np.linalg.norm(x, axis=-1)
            expected = per_token.reshape(LAYERS, -1).mean(axis=1)
            _close(_profile(df, "update_ratio", stack, kind), expected, f"update_ratio {stack}/{kind}")
        assert set(df[(df.quantity == "update_ratio") & (df["stack"] == stack)]["site"]) == set(kinds)


# ================================================================================================
# 5. attn_entropy: uniform attention has closed-form entropy
# ================================================================================================
def test_attn_entropy_uniform_attention(encdec) -> None:
    """q = k = 0 ⇒ uniform attention: ln(S) per head without a mask (encoder self, cross over the
    S source tokens), mean_t ln(t+1) with the causal mask (decoder self-attention)."""
    cfg, graphdef, state, batch = encdec["cfg"], encdec["graphdef"], encdec["state"], encdec["batch"]

    def zero_qk(path, a):
        keys = [getattr(p, "key", None) for p in path]
        return jnp.zeros_like(a) if len(keys) > 4 and keys[3] in ("attn", "cross") and keys[4] in ("q", "k") else a

    uniform = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(zero_qk, state))
    assert float(jnp.abs(uniform.stacks["decoder"].layers.cross.k.weight[...]).max()) == 0.0
    df = probe_model(uniform, batch, CHEAP_PROBES, seed=0)  # same program as the fixture's: a cache hit
    expected = {
        ("encoder", "attn"): np.log(SRC_LENGTH),
        ("decoder", "attn"): np.mean(np.log(np.arange(1, LENGTH + 1))),
        ("decoder", "cross"): np.log(SRC_LENGTH),
    }
    for (stack, kind), value in expected.items():
        for head in range(cfg.heads):
            _close(
                _profile(df, "attn_entropy", stack, f"{kind}.head{head}"),
                np.full(LAYERS, value),
                f"{stack}/{kind}.head{head}",
            )
    sites = set(df[df.quantity == "attn_entropy"]["site"])
    assert sites == {f"{k}.head{h}" for k in ("attn", "cross") for h in range(cfg.heads)}
    # with random q/k (the fixture) the entropies lie strictly between 0 and the uniform maximum
    real = encdec["df"]
    enc = _profile(real, "attn_entropy", "encoder", "attn.head0")
    assert (enc < np.log(SRC_LENGTH)).all() and (enc > 0).all()


# ================================================================================================
# 6. output_change
# ================================================================================================
OUTPUT_CHANGE_LRS = (TINY_LR, 1e-4, 1e-3)


def test_output_change_matches_manual_sign_step(encdec) -> None:
    """sign_grad: θ ← θ − lr·sign(∂ℒ/∂θ) for every parameter under stacks/*/layers (embedding, head
    and final norms frozen); E_t ‖F̂(θ') − F̂(θ)‖² with F̂ = decoder output / its per-token std."""
    cfg, graphdef, state, batch = encdec["cfg"], encdec["graphdef"], encdec["state"], encdec["batch"]
    pcfgs = [ProbeConfig(probes=("output_change",), output_change_lr=lr) for lr in OUTPUT_CHANGE_LRS]
    pcfgs.append(ProbeConfig(probes=("output_change",), output_change_lr=1e-3, output_change_mode="random_sign"))
    run = jax.jit(lambda s: [probe_program(graphdef, s, batch, cfg, p)["output_change"] for p in pcfgs])
    results = jax.device_get(run(state))
    # both modes measure the top (decoder) stack of the encdec model
    assert [list(r) for r in results] == [["decoder"]] * len(pcfgs), [list(r) for r in results]
    assert all(set(r["decoder"]["stack"]) == {"stack_out"} for r in results)
    *changes, random_change = [float(r["decoder"]["stack"]["stack_out"]) for r in results]
    changes = np.array(changes)
    assert 0 < random_change < changes[2], (random_change, changes)  # a random step moves less than −sign(g)

    grads = encdec["ref"]["param_grads"]

    def moved(lr):
        def move(path, x, g):
            keys = [getattr(p, "key", None) for p in path]
            return x - lr * jnp.sign(g) if keys[0] == "stacks" and keys[2] == "layers" else x

        return jax.tree_util.tree_map_with_path(move, state, grads)

    base = np.asarray(encdec["stack_out"](state), np.float64)
    normalize = lambda x: x / x.std(axis=-1, keepdims=True)
    msg = f"output_change for lr {OUTPUT_CHANGE_LRS}: {changes}"
    for lr, change in zip(OUTPUT_CHANGE_LRS[1:], changes[1:]):
        after = np.asarray(encdec["stack_out"](moved(lr)), np.float64)
        expected = np.mean(np.sum((normalize(after) - normalize(base)) ** 2, axis=-1))
        np.testing.assert_allclose(change, expected, rtol=1e-3, err_msg=f"lr={lr}; {msg}")
    # the embedding/head are frozen: moving only them must not be what the probe measured
    assert changes[0] < TINY_CHANGE, msg
    assert (np.diff(changes[1:]) > 0).all(), msg
    # small steps: the change is quadratic in lr (first-order output change squared)
    assert 30 < changes[2] / changes[1] < 300, msg
    print(msg)


# ================================================================================================
# 7. hessian_top_eig vs the dense Hessian
# ================================================================================================
HESSIAN_CFG = ModelConfig(d_model=4, heads=1, d_ff=4, vocab=5, layers=1, placement="pre", arch="decoder")
HESSIAN_ITERS = 200


def test_hessian_top_eig_matches_dense_hessian() -> None:
    """Power iteration v ← Hv/‖Hv‖ converges to the eigenvector of the eigenvalue of largest |λ|, and the
    probe reports its Rayleigh quotient, i.e. λ with its sign. The error after k steps is of order
    |λ₁|·(λ₂/λ₁)^(2k); the tolerance is that bound (floored at float32 HVP precision)."""
    cfg = HESSIAN_CFG
    graphdef, state = nnx.split(build_model(cfg, 0))
    batch = random_batch(cfg, jax.random.key(3), BATCH, 4)
    inputs = model_inputs(cfg, batch)
    flat, unravel = ravel_pytree(state)
    loss = lambda p: loss_from_logits(cfg, nnx.merge(graphdef, unravel(p))(*inputs), batch)
    hessian = np.asarray(jax.jit(jax.hessian(loss))(flat), np.float64)
    hessian = (hessian + hessian.T) / 2
    eigs = np.linalg.eigvalsh(hessian)
    order = np.argsort(-np.abs(eigs))
    top, second = eigs[order[0]], eigs[order[1]]

    pcfg = ProbeConfig(probes=("hessian_top_eig",), hessian_iters=HESSIAN_ITERS)
    got = float(
        jax.jit(lambda s: probe_program(graphdef, s, batch, cfg, pcfg))(state)["hessian_top_eig"]["model"]["stack"][
            "loss"
        ]
    )
    ratio = abs(second / top)
    tol = max(1e-4, 10 * ratio ** (2 * (HESSIAN_ITERS - 1)))
    msg = (
        f"n={flat.size} params; dense top |λ| eigenvalue {top:.6g}, next {second:.6g} (|λ2/λ1|={ratio:.3f}); "
        f"probe {got:.6g}"
    )
    print(msg)
    np.testing.assert_allclose(got, top, rtol=tol, err_msg=msg)


# ================================================================================================
# 8. Seeds: vmapped = one at a time = probe_model; seed_chunk
# ================================================================================================
SEED_CFG = _cfg(arch="decoder", placement="admin")  # Admin: per-seed ω profiling runs inside the vmap
SEEDS = [0, 1, 2]
KEYS = ["seed", "stack", "layer", "site", "quantity", "other_layer"]


def _by_keys(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEYS).reset_index(drop=True)


def _aligned(a: pd.DataFrame, b: pd.DataFrame, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _by_keys(a), _by_keys(b)
    pd.testing.assert_frame_equal(a.drop(columns="value"), b.drop(columns="value"), obj=what)
    return a["value"].to_numpy(), b["value"].to_numpy()


def _assert_same_values(a: pd.DataFrame, b: pd.DataFrame, what: str) -> None:
    x, y = _aligned(a, b, what)
    np.testing.assert_allclose(x, y, rtol=SEED_RTOL, atol=SEED_ATOL, err_msg=what)


@pytest.fixture(scope="module")
def seed_frames():
    common = dict(batch_size=BATCH, seq_len=LENGTH, probes=CHEAP_PROBES)
    return {
        "vmapped": probe_at_init(SEED_CFG, seeds=SEEDS, seed_chunk=len(SEEDS), streams=1, **common),
        "single": pd.concat([probe_at_init(SEED_CFG, seeds=[s], **common) for s in SEEDS], ignore_index=True),
        "chunked": probe_at_init(SEED_CFG, seeds=SEEDS, seed_chunk=2, streams=1, **common),
    }


def test_vmapped_seeds_equal_single_seeds(seed_frames) -> None:
    vm = seed_frames["vmapped"]
    assert sorted(vm["seed"].unique()) == SEEDS
    assert vm["value"].notna().all()
    _assert_same_values(vm, seed_frames["single"], "vmapped vs one seed at a time")
    # different seeds are different models
    per_seed = vm[vm.quantity == "loss"].set_index("seed")["value"]
    assert per_seed.nunique() == len(SEEDS)


def test_seed_chunk_gives_identical_numbers(seed_frames) -> None:
    """lax.map in chunks of 2 (then a remainder of 1) = one vmap over all seeds, to 1 ulp."""
    _assert_same_values(seed_frames["vmapped"], seed_frames["chunked"], "seed_chunk=2 vs full vmap")


@pytest.mark.default_codegen
def test_streams_change_no_number() -> None:
    """Seeds computed on concurrent threads, in groups (the last padded with a repeated seed whose
    results are dropped), are each seed's numbers: bit for bit those of one seed per call, whatever
    the groups' length (one seed at a time, the loop body is the same program), and in seed order.
    So a study's stored numbers do not depend on the streams that computed them. (Exact under XLA's
    default code generation, which users run; under LLVM -O0 loops of different lengths differ in
    the last bit of ~0.3% of the values, hence the marker.)"""
    common = dict(batch_size=BATCH, seq_len=LENGTH, probes=CHEAP_PROBES)
    single = pd.concat([probe_at_init(SEED_CFG, seeds=[s], **common) for s in SEEDS], ignore_index=True)
    # one seed per stream: the single-seed program (no compile of its own), three threads at once
    threads = probe_at_init(SEED_CFG, seeds=SEEDS, streams=3, seed_chunk=1, **common)
    assert list(threads.drop_duplicates("seed")["seed"]) == SEEDS
    pd.testing.assert_frame_equal(_by_keys(threads), _by_keys(single), check_exact=True)
    # a CPU's default, one seed at a time, on two threads: two groups of two (one padding), another loop length
    default = probe_at_init(SEED_CFG, seeds=SEEDS, seed_chunk=1, streams=2, **common)
    assert list(default.drop_duplicates("seed")["seed"]) == SEEDS
    pd.testing.assert_frame_equal(_by_keys(default), _by_keys(single), check_exact=True)


def test_streams_trace_under_the_callers_jax_context() -> None:
    """JAX's configuration contexts are thread-local: seeds computed on worker threads must still be
    traced under the caller's `jax.enable_x64` (a float64 model stays float64). Each seed alone (one
    stream, the same program) must equal it bit for bit; a float32 trace would differ at ~1e-7."""
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        cfg = _cfg(placement="pre", dtype="float64")
        common = dict(batch_size=BATCH, seq_len=LENGTH, probes=("act_norm", "act_grad_norm"), seed_chunk=1)
        threads = probe_at_init(cfg, seeds=[0, 1], streams=2, **common)
        alone = pd.concat([probe_at_init(cfg, seeds=[s], streams=1, **common) for s in (0, 1)], ignore_index=True)
    pd.testing.assert_frame_equal(_by_keys(threads), _by_keys(alone), check_exact=True)


def test_seed_groups_pad_the_last_group() -> None:
    groups = _seed_groups([4, 7, 9], 2)
    assert [g.tolist() for g in groups] == [[4, 7], [9, 9]]
    assert [g.tolist() for g in _seed_groups([3], 1)] == [[3]]
    # 5 seeds on 4 streams: groups of 2, and three groups, not a fourth of padding only
    assert [g.tolist() for g in _seed_groups([0, 1, 2, 3, 4], 4)] == [[0, 1], [2, 3], [4, 4]]


def test_probe_at_init_with_batch_equals_probe_model() -> None:
    """probe_at_init(cfg, seeds, batch=b) row for seed s = probe_model(build_model(cfg, s), b, seed=s).

    Two seeds, the default and one that is not its index in the list (a seed not handed through, or
    its position taken for it, would show): probe_model takes the seed's probe key as an argument of
    one program per configuration, so the second seed runs the first one's compiled program."""
    batch = random_batch(SEED_CFG, jax.random.key(11), BATCH, LENGTH)
    seeds = [0, 2]
    # seq_len only shapes the random batch: with a given batch it is ignored, not checked
    at_init = probe_at_init(SEED_CFG, seeds=seeds, probes=CHEAP_PROBES, batch=batch, seq_len=SEED_CFG.max_len + 1)
    models = pd.concat(
        [probe_model(build_model(SEED_CFG, s), batch, CHEAP_PROBES, seed=s) for s in seeds], ignore_index=True
    )
    assert sorted(at_init["seed"].unique()) == seeds
    _assert_same_values(at_init, models, "probe_at_init(batch=...) vs probe_model")
    program = _model_program(SEED_CFG, ProbeConfig(probes=tuple(CHEAP_PROBES)), study_plan(None))
    assert program._cache_size() == 1, "each seed compiled a program of its own"


# ================================================================================================
# 9. Bad input: ValueError naming the bad value (and the valid choices where there are any)
# ================================================================================================
BAD_CFG = _cfg(arch="decoder", placement="pre", max_len=8)


def _raises(fn, *needles: str) -> str:
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in error message: {message}"
    return message


VALID = ("valid", "act_grad_norm", "hessian_top_eig")


def test_probe_config_rejects_bad_values() -> None:
    _raises(lambda: ProbeConfig(probes=("act_grad_norm", "grad_norm")), "grad_norm", *VALID)
    _raises(lambda: ProbeConfig(probes="act_norm"), "'act_norm'", "tuple", *VALID)
    _raises(lambda: ProbeConfig(output_change_mode="adam"), "'adam'", "sign_grad", "random_sign")
    _raises(lambda: ProbeConfig(output_change_lr=0.0), "output_change_lr", "0.0")
    _raises(lambda: ProbeConfig(output_change_lr=float("nan")), "output_change_lr", "nan")
    _raises(lambda: ProbeConfig(hessian_iters=0), "hessian_iters", "0")
    assert set(CHEAP_PROBES) < set(PROBES)
    ProbeConfig(probes=tuple(PROBES))  # every documented probe is accepted


def test_probe_at_init_rejects_bad_input() -> None:
    cfg = BAD_CFG
    ok = dict(batch_size=BATCH, seq_len=LENGTH)  # everything else valid (max_len is 8 here)
    _raises(lambda: probe_at_init(cfg, probes=("act_norm", "nope"), **ok), "nope", *VALID)
    _raises(lambda: probe_at_init(cfg, probes="act_norm", **ok), "'act_norm'", *VALID)  # not split into characters
    _raises(lambda: probe_at_init(cfg, seeds=[], **ok), "seeds", "empty")
    _raises(lambda: probe_at_init(cfg, seeds=[0, -3], **ok), "-3")
    _raises(lambda: probe_at_init(cfg, seeds=[1, 1], **ok), "duplicates")
    _raises(lambda: probe_at_init(cfg, batch_size=BATCH, seq_len=9), "seq_len=9", "max_len=8")
    _raises(lambda: probe_at_init(cfg, batch_size=0, seq_len=LENGTH), "batch_size", "0")
    _raises(lambda: probe_at_init(cfg, seed_chunk=0, **ok), "seed_chunk", "0")
    _raises(lambda: probe_at_init(cfg, streams=0, **ok), "streams", "0")
    _raises(lambda: probe_at_init(cfg, streams=True, **ok), "streams", "True")
    tokens = np.zeros((BATCH, LENGTH), np.int32)
    _raises(lambda: probe_at_init(cfg, batch={"src": tokens}, **ok), "'tokens'", "missing")
    _raises(
        lambda: probe_at_init(cfg, batch={"tokens": tokens + cfg.vocab}, **ok), str(cfg.vocab), f"0..{cfg.vocab - 1}"
    )
    _raises(lambda: probe_at_init(cfg, batch={"tokens": np.zeros((BATCH, 9), np.int32)}, **ok), "9", "max_len=8")
    enc = dataclasses.replace(cfg, arch="encoder")
    _raises(lambda: probe_at_init(enc, batch={"tokens": tokens}, **ok), "'targets'", "missing")
    with pytest.raises(TypeError, match="ModelConfig"):
        probe_at_init({"arch": "decoder"})


def test_probe_model_rejects_bad_input() -> None:
    model = nnx.eval_shape(lambda: build_model(BAD_CFG, 0))
    tokens = np.zeros((BATCH, LENGTH), np.int32)
    _raises(lambda: probe_model(model, {"tokens": tokens}, ("act_norm", "nope")), "nope", *VALID)
    _raises(lambda: probe_model(model, {"tokens": tokens}, "act_norm"), "'act_norm'", *VALID)
    _raises(lambda: probe_model(model, {"tgt": tokens}), "'tokens'", "missing")
    _raises(lambda: probe_model(model, {"tokens": tokens - 1}), "-1", f"0..{BAD_CFG.vocab - 1}")


# -- loss_mask (the training tasks' target-only loss) ----------------------------------------------
def test_loss_mask_weights_the_token_losses():
    from analysis.probe.loss import cross_entropy, loss_from_logits

    rng = np.random.default_rng(0)
    cfg = ModelConfig(arch="decoder", layers=1, d_model=16, heads=2, d_ff=32, vocab=8)
    logits = jnp.asarray(rng.standard_normal((2, 5, 8)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, 8, (2, 5)), jnp.int32)
    mask = jnp.asarray([[0, 0, 1, 1, 0], [0, 1, 0, 0, 1]], jnp.float32)
    logp = np.asarray(
        jax.nn.log_softmax(logits[:, :-1].astype(jnp.float64) if jax.config.jax_enable_x64 else logits[:, :-1])
    )
    labels = np.asarray(tokens[:, 1:])
    nll = -np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    want = (nll * np.asarray(mask[:, 1:])).sum() / np.asarray(mask[:, 1:]).sum()
    got = loss_from_logits(cfg, logits, {"tokens": tokens, "loss_mask": mask})
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # Without a mask the loss is exactly the plain mean (existing users unchanged).
    assert float(loss_from_logits(cfg, logits, {"tokens": tokens})) == float(
        cross_entropy(logits[:, :-1], tokens[:, 1:])
    )
    assert float(cross_entropy(logits, tokens, jnp.zeros((2, 5), jnp.float32))) == 0.0  # no NaN on an empty mask
