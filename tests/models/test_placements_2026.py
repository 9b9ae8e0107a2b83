"""The 2024-26 placements and norms against independent restatements of their equations
(docs/placements.md, "2024-26 placements" and "Norms"), their constants and init rules, and two
training steps of every one in every arch.

Independence, as in test_placements_reference.py (whose primitives this file reuses: LN, multi-head
attention head by head, the FFN, the reference stack loop, the parameter randomization): no expected
value comes from models.placements / block / stack / norms. The constant functions of
models.placements are imported only to be checked against the formulas written out here.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import NORMS, PLACEMENTS, ModelConfig, Transformer
from models.placements import (
    cait_layerscale_init,
    completep_multiplier,
    deepscalelm_constants,
    lns_scales,
    tfixup_gain,
)
from tests.models.test_placements_reference import (
    CASES,
    ENCDEC_DEPTH,
    INPUTS,
    Ctx,
    S,
    _assert_close,
    _assert_rescaled,
    _config,
    _init_model,
    _randomize,
    _role,
    _small,
    _stack_layers,
    _weights,
    layer_norm,
    norm,
    single_stream,
)

NEW_PLACEMENTS = ("lns", "completep", "deepscalelm", "olmo2", "layerscale", "tfixup")
NEW_NORMS = ("derf", "dyisru")
# Options that make every constant visible: m = L/L_base ≠ 1 with an α that is neither 1 nor ½,
# a LayerScale λ that the randomization then moves per channel.
OPTIONS_2026: dict[str, Any] = dict(completep_alpha=0.75, completep_base_layers=3)


# ---------------------------------------------------------------------------------------------
# Reference layers (docs/placements.md, "2024-26 placements"): x (layer input) -> x' (layer output).
# ---------------------------------------------------------------------------------------------
def lns_layer(P, x, ctx, l):
    # LayerNorm Scaling: h ← h + S(LN(h)/sqrt(ℓ)), ℓ = l + 1 the 1-based layer index, every sublayer.
    h = x
    for kind in ctx.kinds:
        h = h + S(P, kind, layer_norm(h, norm(P, kind, "ln")) / math.sqrt(l + 1), ctx)
    return h


def completep_layer(P, x, ctx, l):
    # CompleteP / depth-µP: h ← h + (L/L_base)^(−α)·S(LN(h)), L the layers of this stack.
    scale = (ctx.layers / ctx.cfg.completep_base_layers) ** (-ctx.cfg.completep_alpha)
    h = x
    for kind in ctx.kinds:
        h = h + scale * S(P, kind, layer_norm(h, norm(P, kind, "ln")), ctx)
    return h


def deepscalelm_layer(P, x, ctx, l):
    # DeepScaleLM: h ← λ·h + β·S(LN(h)), β² = 1/n (n = residual sublayers of the stack) unless
    # deepscalelm_beta2 is set, λ = sqrt(1 − β²).
    n = len(ctx.kinds) * ctx.layers
    beta2 = 1.0 / n if ctx.cfg.deepscalelm_beta2 is None else ctx.cfg.deepscalelm_beta2
    lam, beta = math.sqrt(1.0 - beta2), math.sqrt(beta2)
    h = x
    for kind in ctx.kinds:
        h = lam * h + beta * S(P, kind, layer_norm(h, norm(P, kind, "ln")), ctx)
    return h


def olmo2_layer(P, x, ctx, l):
    # OLMo-2: h ← h + N_out(S(h)): no norm on the sublayer input.
    h = x
    for kind in ctx.kinds:
        h = h + layer_norm(S(P, kind, h, ctx), norm(P, kind, "ln_out"))
    return h


def layerscale_layer(P, x, ctx, l):
    # LayerScale: h ← h + λ ⊙ S(LN(h)), one λ ∈ R^d per sublayer.
    h = x
    for kind in ctx.kinds:
        h = h + P["extra"][kind]["layer_scale"] * S(P, kind, layer_norm(h, norm(P, kind, "ln")), ctx)
    return h


def tfixup_layer(P, x, ctx, l):
    # T-Fixup: no norm anywhere, h ← h + S(h) (its rule is the initialization, tested below).
    h = x
    for kind in ctx.kinds:
        h = h + S(P, kind, h, ctx)
    return h


REFERENCES_2026 = {
    "lns": single_stream(lns_layer, final_norm=True),
    "completep": single_stream(completep_layer, final_norm=True),
    "deepscalelm": single_stream(deepscalelm_layer, final_norm=True),
    "olmo2": single_stream(olmo2_layer, final_norm=True),
    "layerscale": single_stream(layerscale_layer, final_norm=True),
    "tfixup": single_stream(tfixup_layer, final_norm=False),
}


def _reference_model(cfg: ModelConfig, params: dict, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, dict]:
    """test_placements_reference.reference_model with this file's references."""
    embed = lambda tokens: params["embed"]["table"][tokens] * math.sqrt(cfg.d_model)
    n, m = cfg.n_enc_layers, cfg.n_dec_layers
    stacks, memory, out = {}, None, None
    if cfg.arch in ("encoder", "encdec"):
        ctx = Ctx(cfg.arch, "encoder", n, n, m, None, cfg)
        out, sites = REFERENCES_2026[cfg.placement](params["stacks"]["encoder"], embed(inputs[0]), ctx)
        stacks["encoder"] = {"stack_out": out, **sites}
        memory = out
    if cfg.arch in ("decoder", "encdec"):
        ctx = Ctx(cfg.arch, "decoder", m, n, m, memory, cfg)
        out, sites = REFERENCES_2026[cfg.placement](params["stacks"]["decoder"], embed(inputs[-1]), ctx)
        stacks["decoder"] = {"stack_out": out, **sites}
    return out @ params["head"], stacks


@pytest.fixture
def eager():
    """Op by op, as test_placements_reference.py runs its cases (same op shapes, no per-case compile)."""
    with jax.disable_jit():
        yield


def test_the_new_entries_are_registered():
    assert set(NEW_PLACEMENTS) <= set(PLACEMENTS) and set(NEW_NORMS) <= set(NORMS)
    assert set(REFERENCES_2026) == set(NEW_PLACEMENTS)


def _check_against_reference(cfg: ModelConfig, seed_text: str) -> None:
    graphdef, abstract = nnx.eval_shape(lambda: nnx.split(Transformer(cfg, nnx.Rngs(0))))
    state = _randomize(abstract, zlib.crc32(seed_text.encode()))
    inputs = INPUTS[cfg.arch]
    got = nnx.merge(graphdef, state).forward(*inputs)
    logits, expected = _reference_model(cfg, nnx.to_pure_dict(state), inputs)
    for stack, ref in expected.items():
        sites = got.sites[stack]
        for name, value in ref.items():
            actual = sites["stack"][name] if name == "stack_out" else sites["layers"][name]
            _assert_close(actual, value, f"{seed_text}: {stack} {name}")
    _assert_close(got.logits, logits, f"{seed_text}: logits")


# Two layers, so the layer index matters (LNS), in each arch (the encdec decoder has cross-attention).
CASES_2026 = [case for case in CASES if case[1] == 2]


@pytest.mark.parametrize(("arch", "layers"), CASES_2026, ids=[f"{a}-L{n}" for a, n in CASES_2026])
@pytest.mark.parametrize("placement", NEW_PLACEMENTS)
def test_block_matches_reference_2026(placement: str, arch: str, layers: int, eager):
    cfg = _config(placement, arch, layers).replace(**OPTIONS_2026)
    _check_against_reference(cfg, f"{placement}/{arch}/{layers}")


def test_deepscalelm_fixed_beta_matches_reference(eager):
    # The official code's fixed β² = 0.005 (flag default) instead of the depth rule.
    cfg = _config("deepscalelm", "encdec", 2).replace(deepscalelm_beta2=0.005)
    _check_against_reference(cfg, "deepscalelm-fixed/encdec/2")


# ---------------------------------------------------------------------------------------------
# Constants and init rules, against the formulas written out here.
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers", [1, 2, 7, 32])
def test_depth_constants_match_their_formulas(layers: int):
    np.testing.assert_allclose(lns_scales(layers), [1 / math.sqrt(ell) for ell in range(1, layers + 1)], rtol=1e-15)
    for alpha, base in ((1.0, 1), (0.5, 1), (1.0, 4), (0.5, 3)):
        assert completep_multiplier(layers, alpha, base) == pytest.approx((base / layers) ** alpha, rel=1e-14)
    n = 2 * layers
    lam, beta = deepscalelm_constants(n)
    assert beta**2 == pytest.approx(1 / n, rel=1e-14) and lam**2 + beta**2 == pytest.approx(1.0, rel=1e-14)
    lam, beta = deepscalelm_constants(n, 0.005)
    assert (lam, beta) == pytest.approx((math.sqrt(0.995), math.sqrt(0.005)), rel=1e-14)
    # T-Fixup, Algorithm 1: encoder 0.67·N^(−1/4), decoder (9M)^(−1/4).
    assert tfixup_gain("encoder", layers, 5) == pytest.approx(0.67 * layers**-0.25, rel=1e-14)
    assert tfixup_gain("decoder", 5, layers) == pytest.approx((9 * layers) ** -0.25, rel=1e-14)


def test_cait_layerscale_init_by_depth():
    # CaiT: ε = 0.1 for depth up to 18, 1e-5 for depth 24, 1e-6 deeper.
    got = {n: cait_layerscale_init(n) for n in (1, 12, 18, 19, 24, 25, 36)}
    assert got == {1: 0.1, 12: 0.1, 18: 0.1, 19: 1e-5, 24: 1e-5, 25: 1e-6, 36: 1e-6}


@pytest.mark.parametrize(("option", "expected"), [(None, 0.1), (1e-3, 1e-3)])
def test_layerscale_starts_at_its_init_value(option: float | None, expected: float):
    model = _init_model(_small(arch="encdec", placement="layerscale", layers=2, layerscale_init=option))
    for name, st in model.stacks.items():
        assert set(st.layers.extra) == set(st.spec.sublayers)
        for kind in st.spec.sublayers:
            value = np.asarray(st.layers.extra[kind]["layer_scale"][...])
            assert value.shape == (2, model.cfg.d_model)
            np.testing.assert_array_equal(value, np.float32(expected), err_msg=f"{name}/{kind}")


@pytest.mark.parametrize("arch", ["encdec", "decoder", "encoder"])
def test_tfixup_scales_v_o_ffn_and_embedding_weights(arch: str):
    # T-Fixup: W_V, W_O of every attention (cross-attention included) and W1, W2 of every FFN × the
    # stack's gain; the token table × (9N)^(-1/4) with N the bottom stack's layers (the encoder's of an
    # encdec: one shared table, as fairseq's --share-all-embeddings; the decoder's (9M)^(-1/4) in a
    # decoder). W_Q, W_K and the output head untouched. Same draws as the unscaled control.
    depth = ENCDEC_DEPTH if arch == "encdec" else dict(arch=arch, layers=3)
    plain = _weights(_init_model(_small(placement="none", **depth)))
    scaled = _weights(_init_model(_small(placement="tfixup", **depth)))
    bottom_layers = ENCDEC_DEPTH["enc_layers"] if arch == "encdec" else 3

    def factor(path: str) -> float:
        if path == "['embed']['table']":
            return (9 * bottom_layers) ** -0.25
        if _role(path) not in ("v", "o", "w1", "w2"):
            return 1.0
        if "['encoder']" in path:
            return 0.67 * (_stack_layers(path) if arch == "encdec" else 3) ** -0.25
        return (9 * (_stack_layers(path) if arch == "encdec" else 3)) ** -0.25

    rescaled = _assert_rescaled(plain, scaled, factor)
    assert {_role(p) for p in rescaled} == {"v", "o", "w1", "w2", None}
    assert "['embed']['table']" in rescaled
    assert arch != "encdec" or any("['cross']" in p for p in rescaled)


def test_tfixup_code_details():
    # (i) Under fairseq's init the code's extra √2 on v_proj undoes fairseq's Xavier gain 1/√2 (its
    # Xavier-for-all); the other inits draw v at gain 1 already. (ii) A Post-LN encoder under a T-Fixup
    # decoder: the shared table takes the decoder's (9M)^(-1/4). (iii) The gated FFN's W3 takes W1's gain.
    depth = dict(arch="decoder", layers=3)
    gain = (9 * 3) ** -0.25
    for init, v_extra in (("fairseq", math.sqrt(2.0)), ("xavier_uniform", 1.0)):
        plain = _weights(_init_model(_small(placement="none", init=init, **depth)))
        scaled = _weights(_init_model(_small(placement="tfixup", init=init, **depth)))
        v = next(p for p in plain if _role(p) == "v")
        np.testing.assert_allclose(scaled[v], gain * v_extra * plain[v], rtol=1e-6, atol=1e-6, err_msg=init)
    mixed = dict(arch="encdec", enc_placement="post", **{k: ENCDEC_DEPTH[k] for k in ("enc_layers", "dec_layers")})
    plain = _weights(_init_model(_small(placement="post", **mixed)))["['embed']['table']"]
    scaled = _weights(_init_model(_small(placement="tfixup", **mixed)))["['embed']['table']"]
    np.testing.assert_allclose(scaled, (9 * ENCDEC_DEPTH["dec_layers"]) ** -0.25 * plain, rtol=1e-6)
    plain = _weights(_init_model(_small(placement="none", activation="swiglu", **depth)))
    scaled = _weights(_init_model(_small(placement="tfixup", activation="swiglu", **depth)))
    w3 = [p for p in plain if p.endswith("['w3']['weight']")]
    assert w3 and all(np.allclose(scaled[p], gain * plain[p], rtol=1e-6, atol=1e-6) for p in w3)


def test_completep_and_lns_change_no_init():
    # Their rules act in the forward pass (LNS drops scaled init; CompleteP's depth rule keeps the
    # init variance of the base model): the parameters equal Pre-LN's draws.
    pre = _weights(_init_model(_small(placement="pre", layers=2)))
    for placement in ("completep", "lns", "deepscalelm", "olmo2"):
        other = _weights(_init_model(_small(placement=placement, layers=2)))
        common = set(pre) & set(other)
        assert common and all(np.array_equal(pre[k], other[k]) for k in common if "norms" not in k), placement


# ---------------------------------------------------------------------------------------------
# Norms: independent numpy references (imported by test_norms.py, whose parametrized tests run them).
# ---------------------------------------------------------------------------------------------
def ref_derf(x, m, cfg):
    # Derf(x) = γ ⊙ erf(α·x + s) + β, scalars α and s.
    alpha, shift = float(m.alpha[...]), float(m.shift[...])
    erf = np.vectorize(math.erf)
    return np.asarray(m.gain[...]) * erf(alpha * x + shift) + np.asarray(m.bias[...])


def ref_dyisru(x, m, cfg):
    # DyISRU(x) = γ ⊙ sqrt(C)·x / sqrt(β + x²), C the width, scalar β.
    c = x.shape[-1]
    return np.asarray(m.gain[...]) * math.sqrt(c) * x / np.sqrt(float(m.beta[...]) + x**2)


NORM_REFERENCES_2026 = {"derf": ref_derf, "dyisru": ref_dyisru}


@pytest.mark.parametrize("name", NEW_NORMS)
def test_new_norms_match_numpy_with_moved_scalars(name: str):
    # test_norms.py runs the shared references with its own parameters; here the scalars the shared
    # helper does not move (Derf's s, DyISRU's β) are moved too, and the defaults are checked.
    width = 16
    cfg = ModelConfig()
    m = NORMS[name](width, cfg, nnx.Rngs(0))
    if name == "derf":
        assert (float(m.alpha[...]), float(m.shift[...])) == (cfg.derf_alpha0, cfg.derf_shift0) == (0.5, 0.0)
        m.alpha[...], m.shift[...] = jnp.float32(0.8), jnp.float32(-0.3)
    else:
        assert float(m.beta[...]) == width - 1.0
        m.beta[...] = jnp.float32(2.5)
    rng = np.random.default_rng(4)
    m.gain[...] = jnp.asarray(rng.uniform(0.5, 1.5, width), jnp.float32)
    x = (rng.standard_normal((6, width)) * np.array([0.1, 1.0, 3.0, 10.0, 0.5, 2.0])[:, None]).astype(np.float32)
    want = NORM_REFERENCES_2026[name](x.astype(np.float64), m, cfg)
    np.testing.assert_allclose(np.asarray(m(jnp.asarray(x))), want, rtol=1e-5, atol=1e-6)


def test_norm_options_are_read_and_validated():
    derf = NORMS["derf"](8, ModelConfig(derf_alpha0=1.5, derf_shift0=0.25), nnx.Rngs(0))
    assert (float(derf.alpha[...]), float(derf.shift[...])) == (1.5, 0.25)  # exact in float32
    assert float(NORMS["dyisru"](8, ModelConfig(dyisru_beta0=3.0), nnx.Rngs(0)).beta[...]) == 3.0
    for bad in (dict(dyisru_beta0=0.0), dict(derf_alpha0=float("nan")), dict(deepscalelm_beta2=1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ModelConfig(**bad)
    with pytest.raises(ValueError, match="completep_base_layers"):
        ModelConfig(completep_base_layers=0)


# ---------------------------------------------------------------------------------------------
# The SkipInit alias, the CLI listing and the atlas.
# ---------------------------------------------------------------------------------------------
def test_skipinit_is_an_alias_of_rezero_not_an_entry():
    assert "skipinit" not in PLACEMENTS and "skipinit" in PLACEMENTS["rezero"].aliases
    cfg = ModelConfig(arch="encdec", placement="skipinit", enc_placement="skipinit")
    assert cfg.placement == cfg.enc_placement == "rezero" and cfg == ModelConfig(
        arch="encdec", placement="rezero", enc_placement="rezero"
    )


def test_list_shows_the_new_entries_and_the_alias(capsys):
    from analysis import cli

    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    rezero_line = next(line for line in text.splitlines() if line.split()[:1] == ["rezero"])
    assert "skipinit" in rezero_line
    assert all(name in text for name in (*NEW_PLACEMENTS, *NEW_NORMS))


def test_the_atlas_probes_every_new_placement_once_per_arch():
    from analysis.experiments.atlas import ARCH_PANELS, FAMILY_TITLES, atlas_jobs

    jobs = atlas_jobs(layers=3, seeds=1)
    for placement in NEW_PLACEMENTS:
        assert [j.model.arch for j in jobs if j.variant == placement] == [a for a, _, _ in ARCH_PANELS]
        assert PLACEMENTS[placement].family in FAMILY_TITLES  # it gets a panel of the atlas figure
    assert "skipinit" not in {j.variant for j in jobs}


# ---------------------------------------------------------------------------------------------
# Two training steps in every arch.
# ---------------------------------------------------------------------------------------------
TINY = dict(d_model=8, heads=2, d_ff=16, vocab=16, layers=2, max_len=4)
OLMO2_BLOCK = dict(norm="rmsnorm", qk_norm="rms_full", activation="swiglu", pos="rotary", rope_base=500000.0)


def _train_two_steps(archs: tuple[str, ...]) -> None:
    """Two AdamW steps (analysis.train.optim, the training loop's optimizer, and its loss) of every new
    placement (LayerNorm), every new norm (under Pre-LN) and OLMo 2's block in `archs`: finite losses and parameters,
    and every parameter leaf moved (no weight decay: a leaf moves only through its gradient). All
    models in one compiled program, each step traced once (a fori_loop)."""
    from analysis.probe.loss import loss_from_logits, model_inputs, random_batch
    from analysis.train import OptimConfig
    from analysis.train.optim import Hyper, adamw_updates, make_optimizer

    cfgs = [ModelConfig(arch=a, placement=p, **TINY) for a in archs for p in NEW_PLACEMENTS]
    cfgs += [ModelConfig(arch=a, placement="pre", norm=n, **TINY) for a in archs for n in NEW_NORMS]
    # OLMo 2's block: output norm (RMSNorm), QK-norm over the whole projections, SwiGLU, rotary positions.
    cfgs += [ModelConfig(arch=a, placement="olmo2", **OLMO2_BLOCK, **TINY) for a in archs]
    o = OptimConfig(lr=1e-2, weight_decay=0.0)
    opt = make_optimizer(o)
    splits = [nnx.split(Transformer(c, nnx.Rngs(0)), nnx.Param, ...) for c in cfgs]

    def train_two_steps(cfg, graphdef, rest, params, key):
        batch = random_batch(cfg, key, 2, 4)

        def loss_fn(p):
            return loss_from_logits(cfg, nnx.merge(graphdef, p, rest)(*model_inputs(cfg, batch)), batch)

        def step(s, carry):
            p, state, losses = carry
            loss, grads = jax.value_and_grad(loss_fn)(p)
            updates, state, _ = adamw_updates(opt, o.schedule, Hyper.of(o, 2), s, grads, state, p)
            return jax.tree.map(lambda a, u: a + u, p, updates), state, losses.at[s].set(loss)

        with jax.numpy_dtype_promotion("standard"):
            state = opt.init(params)
        params, _, losses = jax.lax.fori_loop(0, 2, step, (params, state, jnp.zeros(2)))
        return losses, params

    def all_models(params_list, key):
        return [train_two_steps(c, g, r, p, key) for c, (g, _, r), p in zip(cfgs, splits, params_list)]

    results = jax.jit(all_models, compiler_options={"xla_backend_optimization_level": 0})(
        [params for _, params, _ in splits], jax.random.key(0)
    )
    for cfg, (_, params, _), (losses, trained) in zip(cfgs, splits, results):
        what = f"{cfg.placement}/{cfg.norm}/{cfg.arch}"
        assert bool(jnp.all(jnp.isfinite(losses))) and bool(jnp.all(losses > 0)), f"{what}: losses {losses}"
        before, after = jax.tree.leaves(params), jax.tree.leaves(trained)
        moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(before, after)]
        assert all(bool(jnp.all(jnp.isfinite(b))) for b in after), what
        assert all(moved), f"{what}: {len(moved) - sum(moved)} of {len(moved)} parameter leaves did not move"


def test_two_training_steps_encdec():
    # The encoder-decoder runs both stack kinds: a bidirectional encoder and a causal decoder with
    # cross-attention, so every wiring meets every sublayer kind here.
    _train_two_steps(("encdec",))


@pytest.mark.slow
def test_two_training_steps_decoder_and_encoder():
    # The two single-stack archs (the encoder with its per-token classification loss).
    _train_two_steps(("decoder", "encoder"))
