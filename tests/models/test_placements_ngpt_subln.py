"""Sub-LN, nGPT and QK-norm against independent restatements of their equations (docs/placements.md).

The standard of tests/models/test_placements_reference.py: the model's forward (every parameter
randomized first, run op by op) equals a hand-written jax.numpy restatement on the same parameter
arrays, to float32 rounding, per arch; nothing expected comes from models.layers / block / stack /
placements. Then the initialization rules (Sub-LN's sqrt(log 2N) family of gains, nGPT's unit-norm
weights) and nGPT's post-update renormalization inside the compiled training step, which must leave
every weight vector unit-norm after real updates, in every arch.
"""

from __future__ import annotations

import copy
import math
import zlib
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.execution import default_plan
from analysis.train import TaskConfig, TrainConfig
from analysis.train.step import Runtime, program
from analysis.train.tasks import prepare
from models import ModelConfig, Transformer
from models.transformer import after_update

# The shapes of test_placements_reference.py (its op shapes are compiled once per session).
D_MODEL, HEADS, D_FF, VOCAB = 16, 2, 32, 32
DH = D_MODEL // HEADS
BATCH, LENGTH = 8, 6
EPS = 1e-5
# Model vs restatement, both float32, different routes (fused einsums vs head by head): the
# reference file's observed worst case is 2.9e-6 relative; the same 2e-5 bound here. A norm in the
# wrong slot, a missing |α| or a wrong logit scale moves the outputs by far more (see the mutation
# check `test_reference_detects_a_wrong_logit_scale`).
REF_TOL = 2e-5
# Unit norm after float32 normalization: a few ulps of 1.
UNIT_TOL = 1e-5
# Same random draws times a constant gain: rounding only (see the reference file's GAIN_TOL).
GAIN_TOL = 1e-6
# nGPT's α at an init large enough that the update visibly mixes in the branch (the paper's 0.05
# would pass with a forgotten α as well: the test must be able to fail).
NGPT_ALPHA = 0.5


def _config(placement: str, arch: str, layers: int, **options: Any) -> ModelConfig:
    return ModelConfig(
        arch=arch,
        placement=placement,
        layers=layers,
        d_model=D_MODEL,
        heads=HEADS,
        d_ff=D_FF,
        vocab=VOCAB,
        pos="none",
        activation="relu",
        norm="layernorm",
        norm_eps=EPS,
        ngpt_alpha_init=NGPT_ALPHA,
        **options,
    )


# ---------------------------------------------------------------------------------------------
# Reference primitives (docs/placements.md), plain jax.numpy, weights x @ W.
# ---------------------------------------------------------------------------------------------
def layer_norm(z: jax.Array, p: dict) -> jax.Array:
    mu = jnp.mean(z, axis=-1, keepdims=True)
    var = jnp.mean((z - mu) ** 2, axis=-1, keepdims=True)
    return p["gain"] * (z - mu) / jnp.sqrt(var + EPS) + p["bias"]


def rms_norm(z: jax.Array, gain: jax.Array) -> jax.Array:
    """OLMo-2's q/k norm: g ⊙ z / sqrt(mean(z²) + ε) over the whole projection."""
    return gain * z / jnp.sqrt(jnp.mean(z**2, axis=-1, keepdims=True) + EPS)


def unit(z: jax.Array) -> jax.Array:
    """z / ‖z‖₂ over the last axis."""
    return z / jnp.sqrt(jnp.sum(z**2, axis=-1, keepdims=True))


def attention(
    p: dict,
    h: jax.Array,
    source: jax.Array,
    *,
    causal: bool,
    qk_norm: str = "none",
    qk_norm_scale: float = 10.0,
    inner: dict | None = None,
    s_qk: jax.Array | None = None,
) -> jax.Array:
    """W_O · [inner LN] concat_i softmax(scale · q_i k_iᵀ) v_i, one head i at a time.

    qk_norm "rms_full": q, k RMS-normed over all d features before the split, scale 1/sqrt(d_h);
    "l2_head": q_i ← g_q,i ⊙ q_i/‖q_i‖ (k alike), scale `qk_norm_scale`; s_qk (nGPT): q_i ←
    s_qk,i ⊙ q_i/‖q_i‖ (k alike), scale sqrt(d_h). `inner`: Sub-LN's LN on the concatenated heads.
    """
    q_all, k_all, v_all = h @ p["q"]["weight"], source @ p["k"]["weight"], source @ p["v"]["weight"]
    scale = 1 / math.sqrt(DH)
    if qk_norm == "rms_full":
        q_all, k_all = rms_norm(q_all, p["qk_gain_q"]), rms_norm(k_all, p["qk_gain_k"])
    heads = []
    for i in range(HEADS):
        cols = slice(i * DH, (i + 1) * DH)
        q, k, v = q_all[..., cols], k_all[..., cols], v_all[..., cols]
        if qk_norm == "l2_head":
            q, k, scale = p["qk_gain_q"][i] * unit(q), p["qk_gain_k"][i] * unit(k), qk_norm_scale
        if s_qk is not None:
            q, k, scale = s_qk[i] * unit(q), s_qk[i] * unit(k), math.sqrt(DH)
        scores = scale * jnp.einsum("btd,bsd->bts", q, k)
        if causal:
            t, s = scores.shape[-2:]
            scores = jnp.where(np.tril(np.ones((t, s), bool)), scores, -jnp.inf)
        w = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
        heads.append(jnp.einsum("bts,bsd->btd", w / jnp.sum(w, axis=-1, keepdims=True), v))
    concat = jnp.concatenate(heads, axis=-1)
    if inner is not None:
        concat = layer_norm(concat, inner)
    return concat @ p["o"]["weight"]


def ffn(p: dict, h: jax.Array, *, mid: dict | None = None, pre_scale: jax.Array | None = None) -> jax.Array:
    """W2 · [mid LN] relu([pre_scale ⊙] W1 h)."""
    pre = h @ p["w1"]["weight"]
    if pre_scale is not None:
        pre = pre_scale * pre
    hidden = jnp.maximum(pre, 0.0)
    if mid is not None:
        hidden = layer_norm(hidden, mid)
    return hidden @ p["w2"]["weight"]


def kinds_of(arch: str, stack: str) -> tuple[str, ...]:
    return ("attn", "cross", "mlp") if arch == "encdec" and stack == "decoder" else ("attn", "mlp")


# ---------------------------------------------------------------------------------------------
# Reference layers.
# ---------------------------------------------------------------------------------------------
def subln_layer(P: dict, h: jax.Array, cfg: ModelConfig, stack: str, memory: jax.Array | None) -> jax.Array:
    # Sub-LN: h ← h + W_O·LN_inner(MHA(LN(h))) (self-attention); h ← h + CA(LN(h), m) (plain);
    # h ← h + W2·LN_mid(relu(W1·LN(h))).
    qk = dict(qk_norm=cfg.qk_norm, qk_norm_scale=cfg.qk_norm_scale)
    for kind in kinds_of(cfg.arch, stack):
        z = layer_norm(h, P["norms"][kind]["ln"])
        if kind == "attn":
            h = h + attention(P["attn"], z, z, causal=stack == "decoder", inner=P["norms"]["attn"]["inner"], **qk)
        elif kind == "cross":
            h = h + attention(P["cross"], z, memory, causal=False, **qk)
        else:
            h = h + ffn(P["mlp"], z, mid=P["norms"]["mlp"]["mid"])
    return h


def pre_layer(P: dict, h: jax.Array, cfg: ModelConfig, stack: str, memory: jax.Array | None) -> jax.Array:
    # Pre-LN with QK-norm: h ← h + S(LN(h)), S's attention with the configured QK-norm.
    qk = dict(qk_norm=cfg.qk_norm, qk_norm_scale=cfg.qk_norm_scale)
    for kind in kinds_of(cfg.arch, stack):
        z = layer_norm(h, P["norms"][kind]["ln"])
        if kind == "mlp":
            h = h + ffn(P["mlp"], z)
        else:
            source = memory if kind == "cross" else z
            h = h + attention(P[kind], z, source, causal=stack == "decoder" and kind == "attn", **qk)
    return h


def ngpt_layer(P: dict, h: jax.Array, cfg: ModelConfig, stack: str, memory: jax.Array | None) -> jax.Array:
    # nGPT: per sublayer, h ← Norm(Norm(h) + |α·α_init·√d| ⊙ (Norm(S(h)) − Norm(h))), where
    # attention q_i, k_i are unit-normed × s_qk·√d (scale sqrt(d_h)) and the FFN's pre-activation is
    # × s_u·√d. Stored α, s_qk at 1/√d and s_u at 1 (the official code's init scaling).
    root_d = math.sqrt(cfg.d_model)
    for kind in kinds_of(cfg.arch, stack):
        extra = P["extra"][kind]
        if kind == "mlp":
            out = ffn(P["mlp"], h, pre_scale=extra["s_u"] * root_d)
        else:
            source = memory if kind == "cross" else h
            out = attention(
                P[kind], h, source, causal=stack == "decoder" and kind == "attn", s_qk=extra["s_qk"] * root_d
            )
        alpha = jnp.abs(extra["alpha"] * cfg.ngpt_alpha_init * root_d)
        a = unit(h)
        h = unit(a + alpha * (unit(out) - a))
    return h


# (layer, final LN) per placement; test_placements_reference.py leaves subln and ngpt to this file.
LAYERS = {"subln": (subln_layer, True), "pre": (pre_layer, True), "ngpt": (ngpt_layer, False)}


def reference_model(cfg: ModelConfig, params: dict, inputs: tuple) -> tuple[jax.Array, dict]:
    """Logits and per-stack {"stack_out", "resid_post"} of the restatement (embedding × sqrt(d), no
    positions; nGPT's logits × s_z·√d)."""
    embed = lambda tokens: params["embed"]["table"][tokens] * math.sqrt(cfg.d_model)
    layer, final = LAYERS[cfg.placement]
    stacks, memory, out = {}, None, None
    for stack, tokens in (("encoder", inputs[0]), ("decoder", inputs[-1])):
        if stack not in params["stacks"]:
            continue
        ps = params["stacks"][stack]
        h, posts = embed(tokens), []
        for l in range(cfg.layers):
            h = layer(jax.tree.map(lambda a: a[l], ps["layers"]), h, cfg, stack, memory)
            posts.append(h)
        out = layer_norm(h, ps["final_norm"]) if final else h
        stacks[stack] = {"stack_out": out, "resid_post": jnp.stack(posts)}
        memory = out
    logits = out @ params["head"]
    if "logit_scale" in params:
        logits = logits * params["logit_scale"] * math.sqrt(cfg.d_model)
    return logits, stacks


# ---------------------------------------------------------------------------------------------
# Model side: every parameter randomized (numpy RNG), run op by op.
# ---------------------------------------------------------------------------------------------
_VECTOR_LEAVES = {  # name -> (center, std)
    "gain": (1.0, 0.3),
    "bias": (0.0, 0.3),
    "qk_gain_q": (1.0, 0.3),
    "qk_gain_k": (1.0, 0.3),
    "alpha": (0.0, 0.25),  # both signs: the model must take |α|
    "s_qk": (0.25, 0.08),  # × √d = 4: around the effective 1
    "s_u": (1.0, 0.3),
    "logit_scale": (0.25, 0.08),
}


def _randomize(abstract: nnx.State, seed: int) -> nnx.State:
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    values = []
    for path, leaf in leaves:
        name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
        noise = jnp.asarray(rng.standard_normal(leaf.shape).astype(leaf.dtype))
        if name in ("weight", "head"):
            values.append(noise / math.sqrt(leaf.shape[-2]))
        elif name == "table":
            values.append(noise / math.sqrt(leaf.shape[-1]))
        elif name in _VECTOR_LEAVES:
            center, std = _VECTOR_LEAVES[name]
            values.append(center + std * noise)
        else:
            raise AssertionError(f"unknown parameter {jax.tree_util.keystr(path)}: add it to _VECTOR_LEAVES")
    return jax.tree_util.tree_unflatten(treedef, values)


def _tokens(seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, VOCAB, (BATCH, LENGTH)), jnp.int32)


INPUTS = {"encoder": (_tokens(1),), "decoder": (_tokens(2),), "encdec": (_tokens(1), _tokens(2))}


def _assert_close(actual: jax.Array, expected: jax.Array, what: str) -> None:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != reference {expected.shape}"
    scale = float(np.sqrt(np.mean(expected**2)))
    err = float(np.max(np.abs(actual - expected)))
    assert err <= REF_TOL * scale, f"{what}: max |model − reference| = {err:.3g}, relative {err / scale:.3g}"


def _forward_both(cfg: ModelConfig, label: str) -> tuple[Any, jax.Array, dict, dict]:
    """(model output, reference logits, reference sites, the randomized parameters)."""
    graphdef, abstract = nnx.eval_shape(lambda: nnx.split(Transformer(cfg, nnx.Rngs(0))))
    state = _randomize(abstract, zlib.crc32(label.encode()))
    inputs = INPUTS[cfg.arch]
    params = nnx.to_pure_dict(state)
    with jax.disable_jit():  # op by op: every case reuses the same few op shapes
        got = nnx.merge(graphdef, state).forward(*inputs)
        logits, expected = reference_model(cfg, params, inputs)
    return got, logits, expected, params


FORWARD_CASES = [
    ("subln", "encoder", {}),
    ("subln", "decoder", {}),
    ("subln", "encdec", {}),
    ("ngpt", "encoder", {}),
    ("ngpt", "decoder", {}),
    ("ngpt", "encdec", {}),
    ("pre", "decoder", {"qk_norm": "l2_head", "qk_norm_scale": 3.0}),
    ("pre", "encdec", {"qk_norm": "rms_full"}),
    ("subln", "encdec", {"qk_norm": "l2_head"}),
]


@pytest.mark.parametrize(
    ("placement", "arch", "options"),
    FORWARD_CASES,
    ids=[f"{p}-{a}" + "".join(f"-{v}" for k, v in o.items() if k == "qk_norm") for p, a, o in FORWARD_CASES],
)
def test_forward_matches_restatement(placement: str, arch: str, options: dict):
    cfg = _config(placement, arch, 2, **options)
    label = f"{placement}/{arch}/{options}"
    got, logits, expected, _ = _forward_both(cfg, label)
    for stack, ref in expected.items():
        for name, value in ref.items():
            actual = got.sites[stack]["stack"][name] if name == "stack_out" else got.sites[stack]["layers"][name]
            _assert_close(actual, value, f"{label}: {stack} {name}")
    _assert_close(got.logits, logits, f"{label}: logits")


MUTATIONS = [
    ("ngpt", "decoder", {}, {"ngpt_alpha_init": 0.05}),  # nGPT's α constant
    ("pre", "decoder", {"qk_norm": "l2_head", "qk_norm_scale": 3.0}, {"qk_norm_scale": 1 / math.sqrt(DH)}),
    ("pre", "encdec", {"qk_norm": "rms_full"}, {"qk_norm": "none"}),  # QK-norm forgotten
]


@pytest.mark.parametrize(("placement", "arch", "options", "mutation"), MUTATIONS, ids=["alpha", "l2-scale", "rms"])
def test_restatement_detects_a_wrong_constant(placement: str, arch: str, options: dict, mutation: dict):
    # The comparison can fail: the restatement with one constant changed (the paper's α = 0.05
    # instead of the configured one, QK-norm's fixed scale taken as 1/sqrt(d_h), no QK-norm) misses
    # the model's logits by far more than REF_TOL.
    cfg = _config(placement, arch, 2, **options)
    got, logits, _, params = _forward_both(cfg, f"{placement}/{arch}/{options}")
    with jax.disable_jit():
        wrong, _ = reference_model(cfg.replace(**mutation), params, INPUTS[arch])
    scale = float(np.sqrt(np.mean(np.asarray(logits) ** 2)))
    assert np.max(np.abs(np.asarray(wrong) - np.asarray(got.logits))) > 100 * REF_TOL * scale


# ---------------------------------------------------------------------------------------------
# Initialization: Sub-LN's gains, nGPT's unit-norm weights.
# ---------------------------------------------------------------------------------------------
def _weights(model: Transformer) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def _eager(cfg: ModelConfig) -> Transformer:
    init_key, _ = jax.random.split(jax.random.key(0))  # build_model's init key
    with jax.threefry_partitionable(False):
        return Transformer(cfg, nnx.Rngs(params=init_key))


@pytest.mark.parametrize(
    "depth", [dict(arch="decoder", layers=3), dict(arch="encdec", enc_layers=3, dec_layers=2)], ids=["dec", "encdec"]
)
def test_subln_init_scales_v_o_fc1_fc2(depth: dict):
    # torchscale subln=True: v_proj, out_proj, fc1, fc2 × γ once at construction, q, k untouched.
    # decoder-only γ = sqrt(log 2M); encdec decoder sqrt(log 3M) with its cross-attention (encoder_attn)
    # untouched; encdec encoder sqrt(log(3M)·log(2N)/3). Same draws as Pre-LN (the same module order).
    small = dict(d_model=D_MODEL, heads=HEADS, d_ff=D_FF, vocab=VOCAB)
    plain = _weights(_eager(ModelConfig(placement="pre", **small, **depth)))
    scaled = _weights(_eager(ModelConfig(placement="subln", **small, **depth)))
    n, m = depth.get("enc_layers", 0), depth.get("dec_layers", depth.get("layers"))
    gamma = {
        ("decoder", "decoder"): lambda: math.sqrt(math.log(2 * m)),
        ("encdec", "decoder"): lambda: math.sqrt(math.log(3 * m)),
        ("encdec", "encoder"): lambda: math.sqrt(math.log(3 * m) * math.log(2 * n) / 3),
    }
    rescaled = set()
    for path, w in plain.items():
        if path not in scaled:  # Sub-LN's extra norm slots
            continue
        keys = [k.strip("[]'") for k in path.split("][")]
        role = keys[-2] if keys[-1] == "weight" else None
        stack = "encoder" if "['encoder']" in path else "decoder"
        factor = 1.0
        if role in ("v", "o", "w1", "w2") and "['cross']" not in path:
            factor = gamma[(depth["arch"], stack)]()
            rescaled.add((stack, role))
        np.testing.assert_allclose(
            scaled[path], factor * w, rtol=GAIN_TOL, atol=GAIN_TOL * np.abs(w).max(), err_msg=path
        )
    assert {r for _, r in rescaled} == {"v", "o", "w1", "w2"}
    extra = set(scaled) - set(plain)
    assert extra and all("['inner']" in p or "['mid']" in p for p in extra), extra
    assert not any("['cross']['inner']" in p for p in extra), "the inner LN is self-attention's only"


def _embedding_axis(path: str) -> int | None:
    """The axis nGPT keeps unit-norm (x @ W layout): rows of the table, columns of the head, the
    input axis of q, k, v, W1, the output axis of W_O, W2."""
    if path.startswith("['embed']['table']"):
        return -1
    if path.startswith("['head']"):
        return -2
    keys = [k.strip("[]'") for k in path.split("][")]
    if keys[-1] != "weight":
        return None
    return {"q": -2, "k": -2, "v": -2, "w1": -2, "o": -1, "w2": -1}[keys[-2]]


def _assert_unit_norm(weights: dict[str, np.ndarray], what: str, stacks: tuple[str, ...]) -> int:
    checked = 0
    for path, w in weights.items():
        axis = _embedding_axis(path)
        if axis is None or (path.startswith("['stacks']") and not any(f"['{s}']" in path for s in stacks)):
            continue
        norms = np.linalg.norm(w.astype(np.float64), axis=axis)
        assert np.all(np.abs(norms - 1) <= UNIT_TOL), f"{what} {path}: norms {norms.min():.6f}..{norms.max():.6f}"
        checked += 1
    return checked


def test_ngpt_weights_start_unit_norm_and_mixed_stacks_stay_alone():
    # nGPT: every weight vector unit-norm along the embedding axis at init; its s_z stored at 1/√d.
    cfg = _config("ngpt", "encdec", 1, enc_placement="post")
    weights = _weights(_eager(cfg))
    # table, head, and the decoder's q, k, v, o of attn and cross, w1, w2
    assert _assert_unit_norm(weights, "init", ("decoder",)) == 2 + 10
    # the Post-LN encoder's projections are not nGPT's: left as drawn (Xavier, not unit-norm)
    enc = weights["['stacks']['encoder']['layers']['attn']['q']['weight']"]
    assert np.max(np.abs(np.linalg.norm(enc, axis=-2) - 1)) > 0.05
    np.testing.assert_allclose(weights["['logit_scale']"], D_MODEL**-0.5, rtol=1e-7)


def test_ngpt_rejects_qk_norm():
    with pytest.raises(ValueError, match=r"'ngpt' unit-normalizes q and k itself.*qk_norm='l2_head'"):
        _config("ngpt", "decoder", 1, qk_norm="l2_head")
    with pytest.raises(ValueError, match=r"unknown qk_norm 'l2'"):
        _config("pre", "decoder", 1, qk_norm="l2")


# ---------------------------------------------------------------------------------------------
# Training: two steps in every arch; nGPT's renormalization inside the compiled step.
# ---------------------------------------------------------------------------------------------
TINY = dict(layers=2, d_model=16, heads=2, d_ff=32, vocab=32, max_len=32)  # tests/analysis/train's
TASK = TaskConfig(name="markov", seq_len=16, batch_size=4)


def _two_steps(model: ModelConfig) -> tuple[Any, Any, dict]:
    """(initial params, params after two plain updates, metrics) of one seed, through the training
    program's compiled init and step chunk (analysis.train.step)."""
    cfg = TrainConfig(model=model, task=TASK, steps=2, seeds=(0,), probe_every=0, eval_every=0)
    data = prepare(cfg.task, cfg.model)
    prog = program(cfg, data, default_plan())
    seeds = jnp.asarray(cfg.seeds, jnp.uint32)
    start = prog.init(seeds)
    states, metrics = prog.plain(start, seeds, jnp.int32(0), jnp.int32(2), data.arrays, Runtime.of(cfg))
    return start.params, states.params, jax.tree.map(np.asarray, metrics)


def _pure(params: Any) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]
    return {jax.tree_util.keystr(p): np.asarray(v)[0] for p, v in leaves}  # seed 0


# encdec (both stacks, cross-attention) in the fast tier; the other archs with the slow tests.
NGPT_TRAIN_ARCHS = [pytest.param("encdec"), *(pytest.param(a, marks=pytest.mark.slow) for a in ("decoder", "encoder"))]


@pytest.mark.parametrize("arch", NGPT_TRAIN_ARCHS)
def test_ngpt_trains_and_stays_unit_norm_after_updates(arch: str):
    model = ModelConfig(arch=arch, placement="ngpt", **TINY)
    start, end, metrics = _two_steps(model)
    assert np.all(np.isfinite(metrics["loss"][0, :2])) and np.all(metrics["update_ratio"][0, :2] > 0)
    before, after = _pure(start), _pure(end)
    stacks = tuple(spec.name for spec in model.stacks())
    assert _assert_unit_norm(before, f"{arch} init", stacks) == _assert_unit_norm(after, f"{arch} step 2", stacks) > 0
    # The updates moved the directions (the check above is not about untouched weights) ...
    moved = [p for p in before if _embedding_axis(p) is not None and not np.allclose(before[p], after[p], atol=1e-6)]
    assert len(moved) >= 8, moved
    # ... and the step the program applies is the model's declared one: it puts weights that are
    # off the sphere back on it.
    hook = after_update(model)
    off = jax.tree.map(lambda a: a * 1.5, end)
    assert _assert_unit_norm(_pure(hook(off)), f"{arch} hook", stacks) > 0


def test_without_the_post_update_step_adamw_leaves_the_sphere():
    # The check above could pass vacuously if AdamW's updates kept unit norms by themselves: the same
    # update (one AdamW step on random gradients, the encdec program of the test above) with the
    # program's post-update step removed leaves every nGPT weight vector off the sphere.
    model = ModelConfig(arch="encdec", placement="ngpt", **TINY)
    cfg = TrainConfig(model=model, task=TASK, steps=2, seeds=(0,), probe_every=0, eval_every=0)
    prog = program(cfg, prepare(cfg.task, cfg.model), default_plan())
    state = jax.tree.map(lambda a: a[0], prog.init(jnp.asarray(cfg.seeds, jnp.uint32)))
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape).astype(a.dtype)), state.params)
    args = (state, jnp.ones((), jnp.float32), grads, jnp.int32(0), Runtime.of(cfg))
    bare = copy.copy(prog)
    bare.after_update = None
    stacks = ("encoder", "decoder")
    expand = lambda params: _pure(jax.tree.map(lambda a: a[None], params))
    on = expand(jax.jit(prog._update)(*args)[0].params)
    off = expand(jax.jit(bare._update)(*args)[0].params)
    assert _assert_unit_norm(on, "with the step", stacks) > 0
    for path, w in off.items():
        axis = _embedding_axis(path)
        if axis is not None:
            drift = np.max(np.abs(np.linalg.norm(w.astype(np.float64), axis=axis) - 1))
            assert drift > 100 * UNIT_TOL, f"{path}: AdamW alone kept unit norms (drift {drift:.2g})"


# Sub-LN in every arch; the two QK-norm forms ride along (one compile per case, no extra ones).
TRAIN_CASES = [
    ("subln", "encoder", {}),
    ("subln", "decoder", {"qk_norm": "rms_full"}),
    ("subln", "encdec", {"qk_norm": "l2_head"}),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("placement", "arch", "options"), TRAIN_CASES, ids=[f"{a}-{o.get('qk_norm', 'none')}" for _, a, o in TRAIN_CASES]
)
def test_trains_two_steps(placement: str, arch: str, options: dict):
    _, _, metrics = _two_steps(ModelConfig(arch=arch, placement=placement, **TINY, **options))
    assert np.all(np.isfinite(metrics["loss"][0, :2])) and np.all(metrics["grad_norm"][0, :2] > 0)
