"""DeepNorm and Admin as extra rows: depth scaling of the last-layer gradient, and the output change.

    lnscope check --paper deepnorm_admin --preset quick --figures reports/experiments

Admin (Liu et al. 2020) attributes Post-LN's instability to its amplification: a small parameter
update changes the output by O(n) in Post-LN and O(log n) in Pre-LN (n residual sublayers). Its ω
and DeepNet's (α, β) rebalance the residual branches. Decoder-only stacks at depths 3, 6, 12 and 24
(the same jobs as Xiong's depth sweep, plus DeepNorm with the decoder-only α = (2L)^¼,
β = (8L)^-¼, and Admin with admin_torch's profiling-free constant ω = sqrt((n+1)/ln(n+1) − 1));
the output change E_tokens‖F̂(θ + δ) − F̂(θ)‖² of the normalized output after one sign step
δ = −1e-4·sign(∂ℒ/∂θ) on every layer parameter (an Adam-like first step); and DeepNorm's
decoder gradient profile in an 18L-18L encoder-decoder (decoder α = (3M)^¼, β = (12M)^-¼, encoder
with the paper's encoder constants). 8 seeds of random tokens, the calibration harness.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis.experiments.claims import Claim, Feature, Statistic, extreme_ratio, ratio
from analysis.experiments.common import W2, decoder_job, encdec_job, feature
from analysis.experiments.experiment import HARNESSES, Experiment, Harness

NAME = "deepnorm_admin"
ADMIN = "admin (constant ω)"
CHANGE = ("output_change", "stack_out")


@dataclass(frozen=True)
class Preset:
    harness: Harness
    depths: tuple[int, ...] = (3, 6, 12, 24)
    deep: int = 18


PRESETS = {
    "tiny": Preset(HARNESSES["tiny"]),
    "quick": Preset(HARNESSES["quick"]),
    "paper": Preset(HARNESSES["paper"], depths=(3, 6, 12, 24, 48)),
}


def plan(p: Preset) -> dict:
    h = p.harness
    sweep = [decoder_job(h, pl, d) for pl in ("post", "pre", "deepnorm") for d in p.depths]
    sweep += [decoder_job(h, "admin", d, variant=ADMIN, admin_init="constant") for d in p.depths]
    return {"depth": sweep, "deep": [encdec_job(h, "deepnorm", p.deep)]}


def _change(variant: str, depth: int) -> Feature:
    return feature(f"{variant}@{depth}", "depth", variant, CHANGE, layer=None, layers=depth)


def _change_ratio(depth: int) -> Statistic:
    return ratio(
        _change("post", depth), _change("pre", depth), f"output change of Post-LN over Pre-LN at L={depth} (seed means)"
    )


CAL = "the calibration's pre-registered threshold (calibration value {}), unchanged"
FORM = "decoder-only stack, random tokens, one sign step of size 1e-4 on every layer parameter; at initialization"
DEPTHS = PRESETS["quick"].depths
CLAIMS = (
    Claim(
        f"{NAME}.deepnorm_flat",
        NAME,
        "Wang et al. 2022 (DeepNet), Fig. 2/Table 1 constants",
        "DeepNorm keeps an 18L-18L decoder's gradients balanced: G_top/G_bottom in [0.7, 1.5].",
        "DeepNorm in both stacks with the paper's encoder-decoder constants (the calibration used a Post-LN "
        "encoder); at initialization",
        NAME,
        ratio(
            feature("top", "deep", "deepnorm", W2, layer=-1),
            feature("bottom", "deep", "deepnorm", W2, layer=0),
            "G_top/G_bottom of the decoder: seed-mean ‖∂ℒ/∂W2‖ of the top layer over the bottom one",
        ),
        (0.7, 1.5),
        "in",
        CAL.format("0.98, measured with a Post-LN encoder"),
        needs=("deep",),
    ),
    Claim(
        f"{NAME}.post_amplification_shallow",
        NAME,
        "Liu et al. 2020 (Admin), output-change theorem",
        "Post-LN's output changes more than Pre-LN's under the same small update, already at 3 layers: >= 2x.",
        f"Post-LN vs Pre-LN, {FORM}",
        NAME,
        _change_ratio(min(DEPTHS)),
        2.0,
        ">=",
        CAL.format("2.4 at L=3"),
        needs=("depth",),
    ),
    Claim(
        f"{NAME}.post_amplification_deep",
        NAME,
        "Liu et al. 2020 (Admin), output-change theorem (O(n) vs O(log n))",
        "The amplification grows with depth: at 24 layers Post-LN's output change is >= 10x Pre-LN's.",
        f"Post-LN vs Pre-LN, {FORM}",
        NAME,
        _change_ratio(max(DEPTHS)),
        10.0,
        ">=",
        CAL.format("25.8 at L=24"),
        needs=("depth",),
    ),
    Claim(
        f"{NAME}.admin_below_pre",
        NAME,
        "Liu et al. 2020 (Admin): ω restores an O(log n) output change claim 9",
        "Admin's output change is at most Pre-LN's at every depth.",
        f"Admin with admin_torch's constant ω (not the paper's profiling), {FORM}",
        NAME,
        extreme_ratio(
            tuple((_change(ADMIN, d), _change("pre", d)) for d in DEPTHS),
            "max",
            "the largest over depths of Admin's output change over Pre-LN's (seed means)",
        ),
        1.0,
        "<=",
        CAL.format("ratios 0.37-0.46"),
        needs=("depth",),
    ),
)


def figures(frame: pd.DataFrame) -> dict:
    from analysis.plot import figures as F  # lazy: matplotlib only to draw, so `lnscope --help` starts fast

    out = {}
    if "depth" in set(frame["part"]):
        d = frame[frame["part"] == "depth"]
        fig, axes = F.figure_grid(2, ncols=2, panel_size=(5.2, 3.8))
        change = d[(d["quantity"] == CHANGE[0]) & (d["stack"] == "decoder")]
        F.plot_lines(
            change,
            axes[0],
            x="layers",
            logx=True,
            logy=True,
            band="logci",
            xlabel="model depth L (layers)",
            ylabel="E‖F̂(θ+δ) − F̂(θ)‖² (normalized output)",
            title="output change after one 1e-4 sign step",
        )
        F.plot_depth_scaling(d, axes[1], quantity=W2[0], site=W2[1], stack="decoder", hue="variant", band="logci")
        axes[1].set_ylabel("‖∂ℒ/∂W2_L‖ of the last layer")
        axes[1].set_title("last-layer gradient vs depth", fontsize="medium")
        fig.suptitle(
            "Admin's amplification and Xiong's depth scaling, with DeepNorm and Admin rows (decoder-only, init)"
        )
        out["deepnorm_admin_depth"] = fig
    return out


EXPERIMENT = Experiment(
    name=NAME,
    paper="Wang, Ma, Dong, Huang, Zhang, Wei 2022, 'DeepNet: Scaling Transformers to 1,000 Layers', arXiv 2203.00555; "
    "Liu, Liu, Gao, Chen, Han 2020, 'Understanding the Difficulty of Training Transformers' (Admin), arXiv 2004.08249",
    title="Post-LN's output change grows with depth; Admin and Pre-LN grow far slower, DeepNorm stays balanced",
    summary=__doc__.split("\n\n", 2)[2],
    command="lnscope check --paper deepnorm_admin",
    presets=PRESETS,
    plan=plan,
    figures=figures,
    claims=CLAIMS,
)
