"""Xu et al. 2019 (Understanding and Improving Layer Normalization): LN's backward pass is what matters.

    lnscope check --paper xu2019 --preset quick --figures reports/experiments

The paper credits LayerNorm's success to the derivatives of its mean and variance: the mean's
re-centres the backward gradient (zero mean across features), the variance's re-scales it (removes
its component along the normalized input y, reducing its variance). DetachNorm keeps LN's forward
pass and detaches both (gradient g/σ); its halves detach only the mean (`detach_mean`: the variance's
derivative stays) or only the variance (`detach_var`: the mean's stays).

Initialization (measured per layer inside a model): a 12-layer Pre-LN decoder-only
stack with every norm slot (and the final norm) holding LayerNorm, LayerNorm-simple (no gain/bias),
DetachNorm, its two halves, or AdaNorm (C = 1, k = 0.1, φ detached). At every LN, from the actual
upstream gradient g = ∂ℒ/∂z and the input gradient ∂ℒ/∂x (one backward pass, zero perturbations
at the norm's input and output):
    re-centring    |cos(∂ℒ/∂x, 1)|                          0 when the mean's derivative flows
    re-scaling     Var_j(σ·∂ℒ/∂x) / Var_j(g)                < 1 when the variance's derivative flows
    alignment      |cos(∂ℒ/∂x, y)|                          0 when the variance's derivative flows
token means, per layer; plus the model-level ‖∂ℒ/∂x_l‖ of the layers' inputs.
8 seeds of random tokens in the calibration harness.

Training (the paper's comparison of LN, LN-simple, DetachNorm and AdaNorm): 6-layer Pre-LN
decoders on the Markov task of analysis/experiments/training.py, one per norm (the halves too), at
a constant lr 3e-4 (at 2e-3 the DetachNorm gap shrank from 0.08 to ~0.025 nats in calibration),
3 seeds, 120 updates, validation curves.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from analysis.execution import default_plan
from analysis.experiments import training
from analysis.experiments.claims import Claim, Feature, Statistic, custom, difference
from analysis.experiments.common import X_GRAD
from analysis.experiments.experiment import HARNESSES, Experiment, Harness
from analysis.probe.api import batch_key
from analysis.probe.loss import loss_from_logits, model_inputs, random_batch
from analysis.probe.tidy import to_frame
from models import ModelConfig, init_state
from models.sites import zeros_like_sites

NAME = "xu2019"
NORMS = training.XU_NORMS
QUANTITIES = {
    "ln_grad_mean_cos": "|cos(∂ℒ/∂x, 1)| at the norm's input (re-centring: 0 when the mean's derivative flows)",
    "ln_grad_var_ratio": "Var_j(σ·∂ℒ/∂x) / Var_j(∂ℒ/∂z) (re-scaling: < 1 when the variance's derivative flows)",
    "ln_grad_y_cos": "|cos(∂ℒ/∂x, y)|, y the normalized input (0 when the variance's derivative flows)",
    "ln_upstream_mean_cos": "|cos(∂ℒ/∂z, 1)| of the upstream gradient at the norm's output",
}


def _cos(a: jax.Array, b: jax.Array) -> jax.Array:
    """Token-wise |cos| over the last axis; (..., d) -> (...)."""
    num = jnp.abs(jnp.sum(a * b, axis=-1))
    return num / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))


def backward_stats(x: jax.Array, g_in: jax.Array, g_out: jax.Array, eps: float) -> dict[str, jax.Array]:
    """Per-layer token means of QUANTITIES; x, g_in, g_out: (L, B, T, d) -> each (L,).

    Tokens whose upstream gradient is exactly zero (the last position of a causal LM, which no
    next-token loss reads) have no direction: they are left out of the means rather than make them 0/0.
    """
    x, g_in, g_out = (a.astype(jnp.float32) for a in (x, g_in, g_out))
    sigma = jnp.sqrt(jnp.var(x, axis=-1, keepdims=True) + eps)
    y = (x - jnp.mean(x, axis=-1, keepdims=True)) / sigma
    ones = jnp.ones_like(x)
    live = jnp.any(g_out != 0, axis=-1)  # (L, B, T)
    safe = lambda a: jnp.where(live, a, 0.0)
    mean = lambda a: jnp.sum(safe(a), axis=(1, 2)) / jnp.sum(live, axis=(1, 2), dtype=jnp.float32)
    var_out = jnp.where(live, jnp.var(g_out, axis=-1), 1.0)
    return {
        "ln_grad_mean_cos": mean(_cos(g_in, ones)),
        "ln_grad_var_ratio": mean(jnp.var(sigma * g_in, axis=-1) / var_out),
        "ln_grad_y_cos": mean(_cos(g_in, y)),
        "ln_upstream_mean_cos": mean(_cos(g_out, ones)),
    }


@functools.lru_cache(maxsize=16)
def _program(cfg: ModelConfig, batch_size: int, seq_len: int):
    plan = default_plan()
    ops = plan.model_ops()

    def one(seed):
        key = jax.random.key(seed)
        graphdef, state = init_state(cfg, key, ops)
        batch = random_batch(cfg, batch_key(key), batch_size, seq_len)

        def forward(perturb):
            out = nnx.merge(graphdef, state).forward(*model_inputs(cfg, batch), perturb=perturb)
            return loss_from_logits(cfg, out.logits, batch), out.sites

        perturb = zeros_like_sites(jax.eval_shape(lambda: forward(None)[1]))
        (loss, sites), grads = jax.value_and_grad(forward, has_aux=True)(perturb)
        result: dict[str, Any] = {"loss": loss, **{q: {} for q in QUANTITIES}, "act_grad_norm": {}}
        for stack, s in sites.items():
            layers, g = s["layers"], grads[stack]["layers"]
            slots = [k[: -len("_norm_in")] for k in layers if k.endswith("_norm_in")]
            per_slot = {
                p: backward_stats(layers[f"{p}_norm_in"], g[f"{p}_norm_in"], g[f"{p}_norm_out"], cfg.norm_eps)
                for p in slots
            }
            for q in QUANTITIES:
                result[q][stack] = {"layers": {p: per_slot[p][q] for p in slots}, "stack": {}}
            resid = g[X_GRAD[1]].astype(jnp.float32)
            result["act_grad_norm"][stack] = {
                "layers": {X_GRAD[1]: jnp.sqrt(jnp.sum(resid**2, axis=(1, 2, 3)))},
                "stack": {},
            }
        return result

    return plan.jit(jax.vmap(one))  # the plan's compiler options, as lnscope's other programs


@dataclass(frozen=True)
class BackwardJob:
    """What each norm's backward pass does to the gradient, per layer, at init (over seeds)."""

    variant: str
    model: ModelConfig
    seeds: int
    batch_size: int
    seq_len: int
    columns: tuple[tuple[str, Any], ...] = ()

    kind = "ln_backward"
    version = 2  # part of the hash: bump it when backward_stats changes (2: zero-gradient tokens left out)

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "model": dataclasses.asdict(self.model),
            "seeds": self.seeds,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "quantities": sorted(QUANTITIES),
        }

    def compute(self) -> pd.DataFrame:
        seeds = list(range(self.seeds))
        result = jax.device_get(_program(self.model, self.batch_size, self.seq_len)(jnp.asarray(seeds, jnp.uint32)))
        return to_frame(result, self.model, seeds)


@dataclass(frozen=True)
class Preset:
    harness: Harness
    layers: int = 12  # the calibration's depth for this comparison
    train: training.Plan | None = None


PRESETS = {name: Preset(HARNESSES[name], train=training.PLANS[name]) for name in ("tiny", "quick", "paper")}


def plan(p: Preset) -> dict:
    h = p.harness
    jobs = [
        BackwardJob(norm, h.model("decoder", "pre", p.layers, norm=norm), h.seeds, h.batch_size, h.seq_len)
        for norm in NORMS
    ]
    parts = {"backward": jobs}
    if p.train is not None:
        parts["train"] = training.xu_jobs(p.train)
    return parts


# ------------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------------
SLOTS = ("attn_ln", "mlp_ln")


def _profiles(quantity: str, norms: tuple[str, ...]) -> tuple[Feature, ...]:
    return tuple(
        Feature(
            f"{norm}:{slot}",
            {"part": "backward", "variant": norm, "stack": "decoder", "quantity": quantity, "site": slot},
            layer="all",
        )
        for norm in norms
        for slot in SLOTS
    )


def _over_profiles(
    quantity: str, norms: tuple[str, ...], how: str, description: str, *, distance_from: float | None = None
) -> Statistic:
    """max (or min) over norms, LN slots and layers of the seed-mean profile (or of |profile − c|)."""
    feats = _profiles(quantity, norms)
    reduce = np.max if how == "max" else np.min

    def combine(m):
        values = np.concatenate([m[f.name] for f in feats], axis=-1)
        return reduce(values if distance_from is None else np.abs(values - distance_from), axis=-1)

    return custom(f"{how}_over_layers", description, feats, combine)


def _layer_mean(quantity: str, norms: tuple[str, ...], how: str, description: str) -> Statistic:
    """max (or min) over norms of the mean over slots and layers of the seed-mean profile."""
    feats = _profiles(quantity, norms)
    reduce = np.max if how == "max" else np.min

    def combine(m):
        per_norm = [np.mean(np.concatenate([m[f"{n}:{s}"] for s in SLOTS], axis=-1), axis=-1) for n in norms]
        return reduce(np.stack(per_norm, axis=-1), axis=-1)

    return custom(f"{how}_of_layer_means", description, feats, combine)


def _g_ratio_change() -> Statistic:
    f = {
        (n, l): Feature(
            f"{n}:g{l}",
            {"part": "backward", "variant": n, "stack": "decoder", "quantity": X_GRAD[0], "site": X_GRAD[1]},
            layer=l,
        )
        for n in ("detachnorm", "layernorm_simple")
        for l in (0, -1)
    }

    def combine(m):
        r = lambda n: m[f[n, 0].name][..., 0] / m[f[n, -1].name][..., 0]
        return np.abs(r("detachnorm") / r("layernorm_simple") - 1.0)

    return custom(
        "relative_change",
        "|(g_1/g_L of DetachNorm) / (g_1/g_L of LN-simple) − 1| (seed means)",
        tuple(f.values()),
        combine,
    )


MEAN_KEPT, MEAN_DETACHED = ("layernorm_simple", "detach_var"), ("detachnorm", "detach_mean")
VAR_KEPT, VAR_DETACHED = ("layernorm_simple", "detach_mean"), ("detachnorm", "detach_var")
SRC = "Xu et al. 2019, §3-4: the derivatives of the mean and variance re-centre and re-scale the backward gradient"
FORM = (
    "12-layer Pre-LN decoder-only stack with the variant in every norm slot (the paper's setting), random tokens; "
    "at init"
)
TRAIN_FORM = (
    "6-layer Pre-LN decoder-only LM on the Markov task (analysis/experiments/training.py), the variant in "
    "every norm slot, AdamW at a constant lr 3e-4 (quick)"
)
# float32 round-off of these identities is ~1e-6 (d = 64); 1e-3 separates 'zero' from the ~0.1 of a random direction
FP32 = 1e-3
CLAIMS = (
    Claim(
        f"{NAME}.mean_gradient_recenters",
        NAME,
        SRC,
        "Where the mean's derivative flows (LN-simple, and DetachNorm with only σ detached), the input gradient "
        "has zero mean across features at every LN: |cos(∂ℒ/∂x, 1)| ≤ 1e-3.",
        f"LayerNorm-simple and detach_var, {FORM}",
        NAME,
        _over_profiles(
            "ln_grad_mean_cos",
            MEAN_KEPT,
            "max",
            "largest |cos(∂ℒ/∂x, 1)| over both norms, both LNs of every layer (seed means)",
        ),
        FP32,
        "<=",
        "ours, set before measuring: an identity in exact arithmetic, 1e-3 in float32",
        needs=("backward",),
    ),
    Claim(
        f"{NAME}.no_recentering_without_mean_gradient",
        NAME,
        SRC,
        "Where the mean is detached (DetachNorm, and its mean-only half), the input gradient is not re-centred: "
        "its layer-mean |cos(∂ℒ/∂x, 1)| is ≥ 0.02.",
        f"DetachNorm and detach_mean, {FORM}",
        NAME,
        _layer_mean(
            "ln_grad_mean_cos",
            MEAN_DETACHED,
            "min",
            "smaller over the two norms of the mean over LNs and layers of |cos(∂ℒ/∂x, 1)| (seed means)",
        ),
        0.02,
        ">=",
        "ours, set before measuring: a random direction in d = 64 has E|cos(g, 1)| ≈ 0.1; 0.02 is 5x below",
        needs=("backward",),
    ),
    Claim(
        f"{NAME}.variance_gradient_rescales",
        NAME,
        f"{SRC} ('reduces the variance of the gradient')",
        "Where the variance's derivative flows (LN-simple, and the mean-detached half) the backward pass reduces "
        "the gradient's variance: the layer-mean Var_j(σ·∂ℒ/∂x)/Var_j(∂ℒ/∂z) is ≤ 0.995.",
        f"LayerNorm-simple and detach_mean, {FORM}",
        NAME,
        _layer_mean(
            "ln_grad_var_ratio",
            VAR_KEPT,
            "max",
            "larger over the two norms of the mean over LNs and layers of Var_j(σ·∂ℒ/∂x)/Var_j(∂ℒ/∂z) (seed means)",
        ),
        0.995,
        "<=",
        "ours, set before measuring: a random upstream direction loses ≈ 1/d = 1.6% of its variance "
        "(1 − cos²(g, y)); 0.995 is a third of that",
        needs=("backward",),
    ),
    Claim(
        f"{NAME}.no_rescaling_without_variance_gradient",
        NAME,
        f"{SRC} (DetachNorm's gradient is g/σ)",
        "Where σ is detached (DetachNorm and its variance-only half) the backward pass keeps the gradient's "
        "variance exactly: |Var_j(σ·∂ℒ/∂x)/Var_j(∂ℒ/∂z) − 1| ≤ 1e-3 at every LN.",
        f"DetachNorm and detach_var, {FORM}",
        NAME,
        _over_profiles(
            "ln_grad_var_ratio",
            VAR_DETACHED,
            "max",
            "largest |variance ratio − 1| over both norms, both LNs of every layer (seed means)",
            distance_from=1.0,
        ),
        FP32,
        "<=",
        "ours, set before measuring: an identity (a shift does not change variance), 1e-3 in float32",
        needs=("backward",),
    ),
    Claim(
        f"{NAME}.detach_changes_gradient_flow",
        NAME,
        " (model level; 'to be calibrated before use')",
        "Detaching the mean and variance changes the model's gradient flow: DetachNorm's g_1/g_L differs from "
        "LN-simple's by more than 10%.",
        f"DetachNorm vs LayerNorm-simple, {FORM}",
        NAME,
        _g_ratio_change(),
        0.1,
        ">=",
        "the calibration's threshold as stated there, flagged there as not yet calibrated (no calibration value)",
        needs=("backward",),
    ),
    Claim(
        f"{NAME}.detach_trains_worse",
        NAME,
        "Xu et al. 2019, Table (DetachNorm vs LayerNorm-simple)",
        "Detaching the mean and variance gradients makes training worse: DetachNorm's final validation loss is at "
        "least 0.02 nats above LayerNorm-simple's.",
        TRAIN_FORM,
        NAME,
        difference(
            training.final_loss("train", "detachnorm"),
            training.final_loss("train", "layernorm_simple"),
            "final validation loss, DetachNorm minus LayerNorm-simple (seed means)",
        ),
        0.02,
        ">=",
        training.CALIBRATED.format("0.08 nats (1.90 vs 1.82)"),
        needs=("train",),
        when="training",
    ),
    Claim(
        f"{NAME}.simple_not_worse",
        NAME,
        "Xu et al. 2019 (removing the gain and bias does not hurt)",
        "LayerNorm-simple (no gain, no bias) trains no worse than LayerNorm: at most 0.05 nats above it.",
        TRAIN_FORM,
        NAME,
        difference(
            training.final_loss("train", "layernorm_simple"),
            training.final_loss("train", "layernorm"),
            "final validation loss, LayerNorm-simple minus LayerNorm (seed means)",
        ),
        0.05,
        "<=",
        training.CALIBRATED.format("+0.005 nats") + "; 0.05 = 'no worse' within our resolution",
        needs=("train",),
        when="training",
    ),
    Claim(
        f"{NAME}.adanorm_not_worse",
        NAME,
        "Xu et al. 2019, AdaNorm results",
        "AdaNorm trains no worse than LayerNorm: at most 0.05 nats above it.",
        f"{TRAIN_FORM}; AdaNorm C = 1, k = 0.1, φ detached",
        NAME,
        difference(
            training.final_loss("train", "adanorm"),
            training.final_loss("train", "layernorm"),
            "final validation loss, AdaNorm minus LayerNorm (seed means)",
        ),
        0.05,
        "<=",
        "ours: LayerNorm-simple's 'no worse' margin, set before any AdaNorm training run",
        needs=("train",),
        when="training",
    ),
)


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def figures(frame: pd.DataFrame) -> dict:
    from analysis.plot import figures as F  # lazy: matplotlib only to draw, so `lnscope --help` starts fast

    out = {}
    parts = set(frame["part"])
    if "backward" in parts:
        d = frame[(frame["part"] == "backward") & (frame["stack"] == "decoder")]
        panels = [
            ("ln_grad_mean_cos", "|cos(∂ℒ/∂x, 1)|", "re-centring: mean of the input gradient", True),
            ("ln_grad_var_ratio", "Var_j(σ·∂ℒ/∂x) / Var_j(∂ℒ/∂z)", "re-scaling: variance kept by the backward", False),
            ("ln_grad_y_cos", "|cos(∂ℒ/∂x, y)|", "component along the normalized input", True),
        ]
        fig, axes = F.figure_grid(len(panels), ncols=3, panel_size=(4.8, 3.6))
        for ax, (q, label, title, log) in zip(axes, panels):
            F.plot_lines(
                d,
                ax,
                x="layer",
                where={"quantity": q, "site": "mlp_ln"},
                logy=log,
                band="logci" if log else "ci",
                xlabel="layer (0 = bottom)",
                ylabel=label,
                title=title,
                legend_title="norm",
            )
        fig.suptitle(
            "Xu et al.: what each norm's backward pass does to the gradient at the FFN's LN (12L Pre-LN, init)"
        )
        out["xu2019_backward"] = fig
    if "train" in parts:
        t = frame[frame["part"] == "train"]
        val = t[(t["quantity"] == "val_loss") & (t["stack"] == "model")]
        ref = val[val["variant"] == "layernorm"].set_index(["seed", "step"])["value"]
        keys = pd.MultiIndex.from_frame(val[["seed", "step"]])
        diff = val.assign(value=val["value"].to_numpy() - ref.reindex(keys).to_numpy())
        fig, axes = F.figure_grid(2, ncols=2, panel_size=(5.2, 3.8))
        F.plot_lines(
            val,
            axes[0],
            x="step",
            logy=False,
            xlabel="update step",
            ylabel="validation loss (nats/token)",
            title="validation loss",
            legend_title="norm",
        )
        others = [n for n in NORMS if n != "layernorm"]  # `where`, not a subset: colors follow the whole frame
        F.plot_lines(
            diff,
            axes[1],
            x="step",
            where={"variant": others},
            logy=False,
            xlabel="update step",
            ylabel="validation loss − LayerNorm's (nats)",
            title="difference to LayerNorm (same seed)",
            legend_title="norm",
        )
        axes[1].axhline(0.0, color="0.5", lw=0.8, ls=":")
        fig.suptitle("Xu et al.: 6-layer Pre-LN decoders, one norm in every slot")
        out["xu2019_training"] = fig
    return out


EXPERIMENT = Experiment(
    name=NAME,
    paper="Xu, Sun, Zhang, Zhao, Lin 2019, 'Understanding and Improving Layer Normalization', NeurIPS 2019, "
    "arXiv 1911.07013",
    title="LayerNorm's mean and variance derivatives re-centre and re-scale the gradient; detaching them hurts",
    summary=__doc__.split("\n\n", 2)[2],
    command="lnscope check --paper xu2019",
    presets=PRESETS,
    plan=plan,
    figures=figures,
    claims=CLAIMS,
)
