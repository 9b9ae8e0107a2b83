"""The probe program: loss, gradients and every requested probe in one jitted computation.

Probes are pure functions of (graphdef, state, batch). Site gradients come from differentiating the
loss with respect to a point added at every probe site of the forward (models.sites): an all-zero
perturbation, whose gradient is ∂ℒ/∂site, or, in a scanned layer stack, a tap whose gradient is
‖∂ℒ/∂site‖² (`_site_gradient_points` says why). One backward pass yields ∂ℒ/∂θ and ‖∂ℒ/∂site‖ for
every site of every layer. Which probes run is
static configuration: XLA compiles only what is asked.

Result layout (a nested dict of arrays, no leading seed axis here):
    {"loss": (), probe: {stack: {"layers": {site: (L, ...)}, "stack": {site: ()}}}}
`stack` is "encoder", "decoder", or "model" (shared embedding and output head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import flax.nnx as nnx
import jax
import jax.numpy as jnp

from analysis.probe import similarity
from analysis.probe.loss import Batch, loss_from_logits, model_inputs
from models import ModelConfig
from models.block import sublayer_input_site
from models.dtypes import upcast
from models.sites import SquaredNormTap, squared_norm_taps, zeros_like_sites

PROBES: dict[str, str] = {
    "param_grad_norm": "‖∂ℒ/∂θ‖ per layer and per parameter group (attn, cross, mlp, norms, extra)",
    "act_grad_norm": "‖∂ℒ/∂site‖ (Frobenius over batch and tokens) at every site of every layer",
    "ln_jacobian_gain": "‖J_normᵀ g‖/‖g‖ for the actual upstream g, and the 1/σ(x) estimate",
    "act_norm": "mean per-token RMS of every site",
    "update_ratio": "mean per-token ‖S(x)‖/‖x‖ of each sublayer's contribution to the stream",
    "cos_adjacent": "mean per-token cosine between consecutive layers (resid_pre and resid_post)",
    "cos_to_last": "mean per-token cosine between each layer and the last one",
    "cka": "linear CKA between every pair of layers' resid_post, and its shuffled-token null",
    "attn_entropy": "mean attention entropy per layer and head (nats)",
    "output_change": "E_tokens ‖F̂(θ + δ) − F̂(θ)‖² of the normalized stack output for a small step δ",
    "hessian_top_eig": "top Hessian eigenvalue of the loss by power iteration on HVPs (costly)",
}
CHEAP_PROBES: tuple[str, ...] = (
    "param_grad_norm",
    "act_grad_norm",
    "ln_jacobian_gain",
    "act_norm",
    "update_ratio",
    "cos_adjacent",
    "cos_to_last",
    "cka",
    "attn_entropy",
)
GRADIENT_PROBES = frozenset({"param_grad_norm", "act_grad_norm", "ln_jacobian_gain"})
SITE_GRADIENT_PROBES = frozenset({"act_grad_norm", "ln_jacobian_gain"})  # read ‖∂ℒ/∂site‖
OUTPUT_CHANGE_MODES = ("sign_grad", "random_sign")
CKA_NULLS = ("full", "half", "off")


@dataclass(frozen=True)
class ProbeConfig:
    """Which probes run, and their few settings.

    Attributes:
        probes: names from PROBES.
        cka_debiased: unbiased-HSIC CKA (default; the biased one reads ≈0.2 on unrelated data).
        similarity_sites: stream sites for the cosine probes.
        output_change_lr: step size of δ on every layer parameter (embeddings and head frozen).
        output_change_mode: "sign_grad" (δ = −lr·sign(∂ℒ/∂θ), an Adam-like first step; Liu et al.
            2020; docs/probes.md) or "random_sign" (δ = lr·random signs).
        hessian_iters: power-iteration steps of hessian_top_eig.
        cka_tokens: CKA and its null on a random subsample of this many of the B·T tokens (drawn
            with the probe key, the same tokens for every layer); None = every token. CKA's cost
            grows as tokens² (Gram path) or tokens·D² (feature path), so a subsample is what makes
            it affordable every training step (benchmarks/README.md); the rows' site then reads
            `resid_post@{m}tok`.
        cka_null: "full" (every ordered pair under one permutation), "half" (pairs i <= j,
            mirrored: half the work, see similarity.stack_cka_null; the null's site gets "/half"),
            or "off" (no null).
    """

    probes: tuple[str, ...] = CHEAP_PROBES
    cka_debiased: bool = True
    similarity_sites: tuple[str, ...] = ("resid_pre", "resid_post")
    output_change_lr: float = 1e-4
    output_change_mode: str = "sign_grad"
    hessian_iters: int = 20
    cka_tokens: int | None = None
    cka_null: str = "full"

    def __post_init__(self) -> None:
        if isinstance(self.probes, str):
            raise ValueError(f"probes must be a tuple of names, got the string {self.probes!r}; valid choices: {', '.join(PROBES)}")
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown:
            raise ValueError(f"unknown probe(s) {unknown}; valid choices: {', '.join(PROBES)}")
        if self.output_change_mode not in OUTPUT_CHANGE_MODES:
            raise ValueError(
                f"unknown output_change_mode {self.output_change_mode!r}; valid: {', '.join(OUTPUT_CHANGE_MODES)}"
            )
        if not (isinstance(self.output_change_lr, (int, float)) and 0 < self.output_change_lr < float("inf")):
            raise ValueError(f"output_change_lr must be a finite number > 0, got {self.output_change_lr!r}")
        if not isinstance(self.hessian_iters, int) or self.hessian_iters < 1:
            raise ValueError(f"hessian_iters must be an integer >= 1, got {self.hessian_iters!r}")
        if self.cka_tokens is not None and (
            not isinstance(self.cka_tokens, int) or isinstance(self.cka_tokens, bool) or self.cka_tokens < 4
        ):
            raise ValueError(f"cka_tokens must be None (all tokens) or an integer >= 4, got {self.cka_tokens!r}")
        if self.cka_null not in CKA_NULLS:
            raise ValueError(f"unknown cka_null {self.cka_null!r}; valid: {', '.join(CKA_NULLS)}")


# The probe set for a probed training step run every step: every cheap probe, with CKA and its null
# on 128 of the batch's tokens and half the null's pairs. Measured (decoder d=128, batch 8 x 64,
# 2-core CPU): probed / plain step 1.07 at 6 layers and 1.09-1.11 at 18, against 1.41-1.51 with the
# full-token CKA and null of ProbeConfig() (benchmarks/README.md).
STEP_PROBES = ProbeConfig(probes=CHEAP_PROBES, cka_tokens=128, cka_null="half")


def cka_sites(pcfg: ProbeConfig, n_tokens: int, site: str = "resid_post") -> tuple[str, str]:
    """Row site names of (cka, cka_null) for a stack of `n_tokens` tokens: the choice of token
    subsample and null pairs is written into the rows, so differently measured values never mix."""
    if pcfg.cka_tokens is not None and pcfg.cka_tokens < n_tokens:
        site = f"{site}@{pcfg.cka_tokens}tok"
    return site, f"{site}/half" if pcfg.cka_null == "half" else site


def _cka_stack(h: jax.Array, key: jax.Array, pcfg: ProbeConfig) -> tuple[jax.Array, jax.Array | None]:
    """(cka, null or None) of a (L, B, T, D) site under `pcfg` (subsample, null pairs)."""
    h = h.reshape(h.shape[0], -1, h.shape[-1])  # (L, n, D)
    if pcfg.cka_tokens is not None and pcfg.cka_tokens < h.shape[1]:
        idx = jax.random.choice(jax.random.fold_in(key, 1), h.shape[1], (pcfg.cka_tokens,), replace=False)
        h = h[:, idx]
    cka = similarity.stack_cka(h, debiased=pcfg.cka_debiased)
    if pcfg.cka_null == "off":
        return cka, None
    return cka, similarity.stack_cka_null(h, key, debiased=pcfg.cka_debiased, half=pcfg.cka_null == "half")


# ---------------------------------------------------------------------------------------------
# Small reductions. Sites are (L, B, T, ...) under "layers" and (B, T, ...) under "stack".
# ---------------------------------------------------------------------------------------------
def _frobenius(a: jax.Array, lead: int) -> jax.Array:
    """‖a‖_F over all axes after the first `lead` ones."""
    a = upcast(a)
    return jnp.sqrt(jnp.sum(jnp.square(a), axis=tuple(range(lead, a.ndim))))


def _token_mean(per_token: jax.Array, lead: int) -> jax.Array:
    return jnp.mean(per_token, axis=tuple(range(lead, per_token.ndim)))


def _rms(a: jax.Array, lead: int) -> jax.Array:
    """Mean over tokens of the per-token RMS over the feature axis."""
    a = upcast(a)
    return _token_mean(jnp.sqrt(jnp.mean(jnp.square(a), axis=-1)), lead)


def _inv_sigma(x: jax.Array, eps: float, lead: int) -> jax.Array:
    """Mean over tokens of 1/sqrt(Var(x) + ε) = √d/‖x − μ‖ (ε aside): the LN Jacobian's scale."""
    x = upcast(x)
    return _token_mean(jax.lax.rsqrt(jnp.var(x, axis=-1) + eps), lead)


def _per_level(sites: dict, fn) -> dict:
    """Apply fn(array, lead) with lead = 1 for per-layer sites and 0 for stack-level sites."""
    return {
        "layers": {k: fn(v, 1) for k, v in sites["layers"].items()},
        "stack": {k: fn(v, 0) for k, v in sites["stack"].items()},
    }


def _layer_summary(probes: set, eps: float) -> Callable[[dict], dict] | None:
    """The per-layer reductions of `probes` as one function of a layer's sites (lead 0: one layer),
    run inside the layer (models.stack.Stack's `summarize`), or None when no probe needs one.

    The reduction-only probes (act_norm; the update ratio; the LN gain estimate) read every site of
    every layer; taken on stacked (L, B, T, D) sites they cost one stack per site in an unrolled loop
    and a re-read of it (18 layers, d=128: see benchmarks/README.md). Same formulas, one layer at a time.
    """
    wanted = probes & {"act_norm", "update_ratio", "ln_jacobian_gain"}
    if not wanted:
        return None

    def summarize(layer: dict) -> dict:
        layer = {k: _at_recorded_precision(v) for k, v in layer.items()}
        out: dict[str, dict] = {}
        if "act_norm" in wanted:
            out["act_norm"] = {k: _rms(v, 0) for k, v in layer.items()}
        if "ln_jacobian_gain" in wanted:
            out["ln_gain_estimate"] = {p: _inv_sigma(layer[f"{p}_norm_in"], eps, 0) for p in _norm_pairs(layer)}
        if "update_ratio" in wanted:
            out["update_ratio"] = _update_ratios(layer)
        return out

    return summarize


def _at_recorded_precision(site: jax.Array) -> jax.Array:
    """A site below float32 (bfloat16, float16) in float32, rounded to its own precision. Reduced
    inside the layer, the reduction fuses with the op that made the site, and XLA's excess-precision
    rule would otherwise read the unrounded float32 value (up to 5e-4 off the recorded bfloat16
    site's act_norm); reduce_precision is an op it keeps."""
    if jnp.finfo(site.dtype).bits >= 32:
        return site
    info = jnp.finfo(site.dtype)
    return jax.lax.reduce_precision(upcast(site), exponent_bits=info.nexp, mantissa_bits=info.nmant)


def _update_ratios(layer: dict) -> dict:
    """Token mean of ‖sublayer output‖ / ‖sublayer input‖ per sublayer kind present in one layer's sites."""
    kinds = tuple(k for k in ("attn", "cross", "mlp") if f"{k}_out" in layer)
    per_token = lambda f, x: jnp.linalg.norm(f, axis=-1) / jnp.linalg.norm(x, axis=-1)
    return {k: _token_mean(per_token(layer[f"{k}_out"], layer[sublayer_input_site(kinds, k)]), 0) for k in kinds}


def _norm_pairs(sites: dict) -> list[str]:
    return [k[: -len("_norm_in")] for k in sites if k.endswith("_norm_in") and f"{k[:-2]}out" in sites]


def _param_group_norms(layer_grads: Any) -> dict[str, jax.Array]:
    """(L,) gradient norms per parameter leaf ("attn.q.weight") and per top group ("attn", "norms")."""
    squares: dict[str, jax.Array] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(layer_grads)[0]:
        name = ".".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        sq = jnp.sum(jnp.square(upcast(leaf)), axis=tuple(range(1, leaf.ndim)))
        squares[name] = sq
        group = name.split(".")[0]
        squares[group] = squares.get(group, 0.0) + sq
        squares["block"] = squares.get("block", 0.0) + sq
    return {k: jnp.sqrt(v) for k, v in squares.items()}


def _global_norm(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(upcast(x))) for x in leaves)) if leaves else jnp.zeros(())


def _is_layer_path(path: tuple) -> bool:
    keys = [getattr(p, "key", None) for p in path]
    return len(keys) >= 3 and keys[0] == "stacks" and keys[2] == "layers"


def _site_gradient_points(model: nnx.Module, sites: dict) -> dict:
    """What the backward pass differentiates at each stack's sites (`sites`: shapes of a forward's of
    `model`, a models.Transformer; whether a stack scans is its layer loop's choice, models.ops).

    A scanned stack gets ‖∂ℒ/∂site‖² taps: full per-layer gradients would each be written into a
    stacked (L, B, T, D) buffer by every iteration of the backward loop, and zeros of that size fed
    in. An unrolled stack gets zero
    perturbations: its gradients are stacked once per site, while taps add a reduction per site and
    layer. The norms agree to float rounding; benchmarks/README.md has the measurements.
    """
    scanned = {name: stack.layer_loop.scans(stack.spec.layers) for name, stack in model.stacks.items()}
    return {name: squared_norm_taps(s) if scanned[name] else zeros_like_sites(s) for name, s in sites.items()}


def _site_grad_norm(g: jax.Array | SquaredNormTap, lead: int) -> jax.Array:
    """‖∂ℒ/∂site‖ (Frobenius over batch and tokens) from the gradient of one `_site_gradient_points`
    point: a full site gradient, or a tap's squared norm."""
    return jnp.sqrt(g.zero) if isinstance(g, SquaredNormTap) else _frobenius(g, lead)


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
    probes = set(pcfg.probes)
    key = jax.random.key(0) if key is None else key
    inputs = model_inputs(cfg, batch)

    def forward(state, perturb, summarize=None):
        out = nnx.merge(graphdef, state).forward(*inputs, perturb=perturb, summarize=summarize)
        return loss_from_logits(cfg, out.logits, batch), out

    summarize = _layer_summary(probes, cfg.norm_eps)

    needs_grad = want_grads or bool(probes & GRADIENT_PROBES) or (
        "output_change" in probes and pcfg.output_change_mode == "sign_grad"
    )
    if needs_grad:
        points = None
        if probes & SITE_GRADIENT_PROBES:
            shapes = jax.eval_shape(lambda s: forward(s, None)[1].sites, state)
            points = _site_gradient_points(nnx.merge(graphdef, state), shapes)
        (loss, out), (g_state, g_points) = jax.value_and_grad(forward, argnums=(0, 1), has_aux=True)(state, points, summarize)
        if points is not None:
            site_grad_norm = {name: _per_level(g, _site_grad_norm) for name, g in g_points.items()}
    else:
        loss, out = forward(state, None, summarize)
    sites, stats = out.sites, out.stats
    summary = {name: st["layers"].get("summary", {}) for name, st in stats.items()}
    result: dict[str, Any] = {"loss": loss}

    if "param_grad_norm" in probes:
        grads = nnx.to_pure_dict(g_state)
        per_stack = {
            name: {
                "layers": _param_group_norms(stack_grads["layers"]),
                "stack": {k: _global_norm(v) for k, v in stack_grads.items() if k != "layers"},
            }
            for name, stack_grads in grads["stacks"].items()
        }
        model_level = {k: _global_norm(v) for k, v in grads.items() if k != "stacks"}
        result["param_grad_norm"] = {**per_stack, "model": {"layers": {}, "stack": model_level}}

    if "act_grad_norm" in probes:
        result["act_grad_norm"] = site_grad_norm

    if "ln_jacobian_gain" in probes:
        gain, estimate = {}, {}
        for name in sites:
            gain[name], estimate[name] = {}, {}
            for level, lead in (("layers", 1), ("stack", 0)):
                g, s = site_grad_norm[name][level], sites[name][level]
                pairs = _norm_pairs(s)
                gain[name][level] = {p: g[f"{p}_norm_in"] / g[f"{p}_norm_out"] for p in pairs}
                estimate[name][level] = (
                    summary[name]["ln_gain_estimate"] if level == "layers"
                    else {p: _inv_sigma(s[f"{p}_norm_in"], cfg.norm_eps, lead) for p in pairs}
                )  # fmt: skip
        result["ln_jacobian_gain"] = gain
        result["ln_gain_estimate"] = estimate

    if "act_norm" in probes:
        result["act_norm"] = {
            name: {"layers": summary[name]["act_norm"], "stack": {k: _rms(v, 0) for k, v in s["stack"].items()}}
            for name, s in sites.items()
        }

    if "update_ratio" in probes:
        result["update_ratio"] = {name: {"layers": summary[name]["update_ratio"], "stack": {}} for name in sites}

    for probe, fn in (("cos_adjacent", similarity.stack_cosine_adjacent), ("cos_to_last", similarity.stack_cosine_to_last)):
        if probe in probes:
            result[probe] = {
                name: {
                    "layers": {
                        site: fn(s["layers"][site])
                        for site in (*pcfg.similarity_sites, *(f"dual_{x}" for x in pcfg.similarity_sites))
                        if site in s["layers"]
                    },
                    "stack": {},
                }
                for name, s in sites.items()
            }

    if "cka" in probes:
        cka_key = jax.random.fold_in(key, 1)
        result["cka"], result["cka_null"] = {}, {}
        for name, s in sites.items():
            h = s["layers"]["resid_post"]
            site, null_site = cka_sites(pcfg, h[0].size // h.shape[-1])
            cka, null = _cka_stack(h, cka_key, pcfg)
            result["cka"][name] = {"layers": {site: cka}, "stack": {}}
            if null is not None:
                result["cka_null"][name] = {"layers": {null_site: null}, "stack": {}}
        if not result["cka_null"]:
            del result["cka_null"]

    if "attn_entropy" in probes:
        result["attn_entropy"] = {
            name: {"layers": {k: v for k, v in st["layers"].items() if k.endswith("_entropy")}, "stack": {}}
            for name, st in stats.items()
        }

    if "output_change" in probes:
        top = "decoder" if "decoder" in sites else "encoder"  # not list(sites)[-1]: pytree transforms sort dict keys
        base = sites[top]["stack"]["stack_out"]
        if pcfg.output_change_mode == "sign_grad":
            direction = jax.tree.map(lambda g: -jnp.sign(g), g_state)
        else:
            leaves, treedef = jax.tree.flatten(state)
            keys = jax.random.split(jax.random.fold_in(key, 2), len(leaves))
            signs = [jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
            direction = jax.tree.unflatten(treedef, signs)
        moved = jax.tree_util.tree_map_with_path(
            lambda path, x, d: x + pcfg.output_change_lr * d if _is_layer_path(path) else x, state, direction
        )
        after = forward(moved, None)[1].sites[top]["stack"]["stack_out"]
        normalize = lambda x: x / jnp.std(x, axis=-1, keepdims=True)
        change = jnp.mean(jnp.sum(jnp.square(normalize(after) - normalize(base)), axis=-1))
        result["output_change"] = {top: {"layers": {}, "stack": {"stack_out": change}}}

    if "hessian_top_eig" in probes:
        result["hessian_top_eig"] = {"model": {"layers": {}, "stack": {"loss": _hessian_top_eig(forward, state, key, pcfg)}}}
    return result, (g_state if want_grads else None)


def _hessian_top_eig(forward, state: nnx.State, key: jax.Array, pcfg: ProbeConfig) -> jax.Array:
    """Power iteration v ← Hv/‖Hv‖ with Hessian-vector products (forward-over-reverse)."""
    loss = lambda s: forward(s, None)[0]
    grad = jax.grad(loss)
    hvp = lambda v: jax.jvp(grad, (state,), (v,))[1]
    dot = lambda a, b: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.fold_in(key, 3), len(leaves))
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])
    v = jax.tree.map(lambda x: x / jnp.sqrt(dot(v, v)), v)

    def step(_, carry):
        v, _ = carry
        hv = hvp(v)
        eig = dot(v, hv)
        return jax.tree.map(lambda x: x / jnp.sqrt(dot(hv, hv)), hv), eig

    _, eig = jax.lax.fori_loop(0, pcfg.hessian_iters, step, (v, jnp.zeros_like(dot(v, v))))
    return eig
