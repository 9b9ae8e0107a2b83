"""The coordinate check (µP's standard plot): how large each layer's activations are, and how much the
first k training steps change them, across a sweep of widths and of depths, for given placements.

For every model of a sweep and every seed, the model is trained for k steps by the training room's
own compiled step (analysis.train.step: the task's batches, AdamW, and whatever the placement's
training step declares), and before the first step and after each one it is run on one fixed batch
x (the task's first validation batch: the same tokens for every width, depth, seed and step):

    coord_rms        RMS(h_t) = sqrt(mean over the B·T·D coordinates of h_t(x)²)
    coord_delta_rms  RMS(Δh_t) = RMS(h_t(x) − h_0(x))

at each layer's sites (the stream after the layer, resid_post, and the sublayer outputs attn_out and
mlp_out) and at the logits (stack "model", site "logits", layer -1). The update is measured on the
activations (Δh, the change of the layer's output on a fixed input), not on the weights (ΔW): Δh is
what the parametrizations promise to keep Θ(1) in width (µP: Yang & Hu 2021, "Tensor Programs IV";
Yang et al. 2022, "Tensor Programs V", whose coordinate checks plot it) and to scale with depth as
CompleteP / depth-µP set it (Dey et al. 2025, arXiv 2505.01618; Yang et al. 2023, "Tensor Programs
VI"), and it folds in every weight of the layer and the path to it. A parametrization that passes
draws flat lines against width (or depth); standard parametrization with Adam draws Δh growing with
width after a few steps.

The placement is data: `CoordSettings.placements` (any of models.PLACEMENTS; the quick and paper
presets compare "completep" against "pre", standard parametrization). No claims are made here; the
figure is the result, and CompleteP's claims (analysis/experiments/dey2025.py) read the same jobs.

    lnscope report --experiments coordcheck                    # its section of the report

    frame = EXPERIMENTS["coordcheck"].run("quick")             # tidy rows (+ part "width" / "depth")
    figs = EXPERIMENTS["coordcheck"].figures(frame)            # {"coordcheck_width": Figure, ...}
    frame = coordinate_check("quick", placements=("pre", "post"))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from analysis.execution import default_plan
from analysis.experiments.experiment import Experiment
from analysis.experiments.runs import run_jobs
from analysis.probe.loss import model_inputs
from analysis.probe.tidy import COLUMNS, DTYPES
from analysis.train import OptimConfig, TaskConfig, TrainConfig
from analysis.train.config import to_dict
from analysis.train.step import Runtime, program, val_key
from analysis.train.tasks import prepare
from models import PLACEMENTS, ModelConfig
from models.dtypes import upcast

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "coordcheck"  # its key in analysis.experiments.EXPERIMENTS
QUANTITIES = ("coord_rms", "coord_delta_rms")
SWEEPS = ("width", "depth")
SITES = ("resid_post", "attn_out", "mlp_out")


@dataclass(frozen=True)
class CoordSettings:
    """One preset of the coordinate check.

    Attributes:
        widths: d_model of the width sweep (at `depth` layers); () = no width sweep.
        depths: layers of the depth sweep (at d_model `width`); () = no depth sweep.
        depth, width: the fixed depth of the width sweep and the fixed width of the depth sweep.
        head_dim: heads = d_model / head_dim (the head size stays fixed as the width grows, µP's setting).
        ff_mult: d_ff = ff_mult · d_model.
        vocab, seq_len, batch_size: the Markov task (analysis.train.tasks) and the fixed batch x.
        steps: k, the training steps measured (the check reads steps 0..k).
        seeds: seeds 0..seeds-1 per model.
        lr: AdamW's constant learning rate (no warm-up; large enough that k steps move the features).
        placements: the placements compared, any of models.PLACEMENTS.
        sites: the per-layer sites measured.
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    depth: int
    width: int
    head_dim: int
    ff_mult: int
    vocab: int
    seq_len: int
    batch_size: int
    steps: int
    seeds: int
    lr: float
    placements: tuple[str, ...] = ("pre",)
    sites: tuple[str, ...] = SITES

    def __post_init__(self) -> None:
        for name in ("widths", "depths", "placements", "sites"):
            value = getattr(self, name)
            if isinstance(value, (str, int)) or not isinstance(value, (tuple, list)):
                raise ValueError(f"{name} must be a tuple, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        unknown = [p for p in self.placements if p not in PLACEMENTS]
        if unknown or not self.placements:
            raise ValueError(f"placements {list(self.placements)}: unknown {unknown}; valid: {', '.join(PLACEMENTS)}")
        if not self.widths and not self.depths:
            raise ValueError("a coordinate check needs widths or depths to sweep")
        if not self.sites:
            raise ValueError("sites must name at least one site, e.g. ('resid_post',)")
        for w in (*self.widths, self.width):
            if not isinstance(w, int) or w < self.head_dim or w % self.head_dim:
                raise ValueError(f"width {w!r} must be a positive multiple of head_dim={self.head_dim}")
        names = ("depth", "steps", "seeds", "ff_mult", "vocab", "seq_len", "batch_size")
        counts = [(n, getattr(self, n)) for n in names]
        for name, value in [*counts, *(("depths", d) for d in self.depths)]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must hold integers >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")

    def model(self, placement: str, d_model: int, layers: int) -> ModelConfig:
        return ModelConfig(
            arch="decoder",
            placement=placement,
            layers=layers,
            d_model=d_model,
            heads=d_model // self.head_dim,
            d_ff=self.ff_mult * d_model,
            vocab=self.vocab,
            max_len=self.seq_len,
        )

    def train_config(self, model: ModelConfig) -> TrainConfig:
        """The k-step run of `model` (no probes, no evaluation: the check measures on its own batch)."""
        return TrainConfig(
            model=model,
            task=TaskConfig(name="markov", seq_len=self.seq_len, batch_size=self.batch_size),
            optim=OptimConfig(lr=self.lr, schedule="constant"),
            steps=self.steps,
            seeds=tuple(range(self.seeds)),
            probe_every=0,
            eval_every=0,
        )


@dataclass(frozen=True)
class CoordJob:
    """The coordinate check of one model over its seeds: rows of coord_rms and coord_delta_rms at
    steps 0..k (analysis.experiments.runs computes and stores it once per spec)."""

    variant: str
    config: TrainConfig
    sites: tuple[str, ...]
    columns: tuple[tuple[str, Any], ...] = ()

    kind = "coordcheck"
    version = 1  # of `measure_steps`: bump when what it computes changes

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": self.version, "config": to_dict(self.config), "sites": list(self.sites)}

    def compute(self) -> pd.DataFrame:
        return measure_steps(self.config, self.sites)


def _rms(a: jax.Array, lead: int) -> jax.Array:
    """sqrt(mean a²) over every axis after the first `lead`."""
    a = upcast(a)
    return jnp.sqrt(jnp.mean(jnp.square(a), axis=tuple(range(lead, a.ndim))))


def measure_steps(cfg: TrainConfig, sites: Sequence[str] = SITES) -> pd.DataFrame:
    """Train every seed of `cfg` for cfg.steps steps with the training room's compiled step and
    measure RMS(h_t) and RMS(h_t − h_0) on the task's first validation batch before the first step
    and after each: tidy rows (analysis.probe.tidy.COLUMNS), steps 0..cfg.steps."""
    sites = tuple(sites)
    data = prepare(cfg.task, cfg.model)
    plan = default_plan()
    prog = program(cfg, data, plan)
    seeds = jnp.asarray(cfg.seeds, jnp.uint32)
    rt = Runtime.of(cfg)
    batch = data.batch(data.arrays, val_key(cfg.task.data_seed, 0), split="val")
    inputs = model_inputs(cfg.model, batch)

    def one(params: nnx.State, params0: nnx.State) -> dict:
        out = nnx.merge(prog.graphdef, params).forward(*inputs)
        out0 = nnx.merge(prog.graphdef, params0).forward(*inputs)
        res = {"model/logits": (_rms(out.logits, 0), _rms(out.logits - out0.logits, 0))}
        for stack, levels in out.sites.items():
            for site in sites:
                if site in levels["layers"]:
                    h, h0 = levels["layers"][site], out0.sites[stack]["layers"][site]
                    res[f"{stack}/{site}"] = (_rms(h, 1), _rms(h - h0, 1))  # (L,) each
        return res

    measure = plan.jit(jax.vmap(one))  # the plan's compiler options, as the step programs
    states = prog.init(seeds)
    params0 = states.params
    per_step = []
    for step in range(cfg.steps + 1):
        per_step.append(jax.device_get(measure(states.params, params0)))
        if step < cfg.steps:
            states, _ = prog.plain(states, seeds, step, 1, data.arrays, rt)
    return _rows(cfg, per_step)


def _rows(cfg: TrainConfig, per_step: list[dict]) -> pd.DataFrame:
    """Tidy rows from per-step {"stack/site": (rms (S, L) or (S,), delta rms)}."""
    model, seeds = cfg.model, np.asarray(cfg.seeds, np.int64)
    blocks = []
    for step, result in enumerate(per_step):
        for key, pair in result.items():
            stack, site = key.split("/", 1)
            for quantity, values in zip(QUANTITIES, pair):
                values = np.asarray(values, np.float64).reshape(len(seeds), -1)  # (S, L) or (S, 1)
                layers = np.arange(values.shape[1]) if stack != "model" else np.array([-1])
                blocks.append(
                    pd.DataFrame(
                        {
                            "seed": np.repeat(seeds, len(layers)),
                            "layer": np.tile(layers, len(seeds)),
                            "value": values.reshape(-1),
                            "stack": stack,
                            "site": site,
                            "quantity": quantity,
                            "step": step,
                        }
                    )
                )
    frame = pd.concat(blocks, ignore_index=True)
    frame = frame.assign(
        run="",
        arch=model.arch,
        placement=model.placement,
        norm=model.norm,
        layers=model.layers,
        d_model=model.d_model,
        other_layer=-1,
    )
    return frame[list(COLUMNS)].astype(DTYPES)


def _plan(s: CoordSettings) -> dict[str, list[CoordJob]]:
    jobs = lambda shapes: [
        CoordJob(placement, s.train_config(s.model(placement, d, layers)), s.sites)
        for placement in s.placements
        for d, layers in shapes
    ]
    plan = {}
    if s.widths:
        plan["width"] = jobs([(d, s.depth) for d in s.widths])
    if s.depths:
        plan["depth"] = jobs([(s.width, layers) for layers in s.depths])
    return plan


PRESETS = {
    # The test suite's size: two widths, two depths, three steps.
    "tiny": CoordSettings(
        widths=(16, 32),
        depths=(2, 4),
        depth=2,
        width=16,
        head_dim=8,
        ff_mult=2,
        vocab=32,
        seq_len=8,
        batch_size=2,
        steps=3,
        seeds=2,
        lr=1e-2,
    ),
    "quick": CoordSettings(
        widths=(32, 64, 128, 256),
        depths=(2, 4, 8, 16),
        depth=4,
        width=64,
        head_dim=16,
        ff_mult=4,
        vocab=64,
        seq_len=32,
        batch_size=8,
        steps=10,
        seeds=3,
        lr=1e-2,
        placements=("pre", "completep"),
    ),
    "paper": CoordSettings(
        widths=(128, 256, 512, 1024, 2048),
        depths=(4, 8, 16, 32, 64),
        depth=8,
        width=256,
        head_dim=64,
        ff_mult=4,
        vocab=256,
        seq_len=128,
        batch_size=16,
        steps=20,
        seeds=4,
        lr=1e-2,
        placements=("pre", "completep"),
    ),
}


def coordinate_check(
    preset: str = "quick", *, placements: Sequence[str] | None = None, store: Any = None, progress: bool = False
) -> pd.DataFrame:
    """The coordinate check's tidy frame at `preset`, for `placements` (default: the preset's), e.g.
    coordinate_check("quick", placements=("pre", "completep")) once CompleteP is registered."""
    settings = EXPERIMENT.preset(preset)
    if placements is not None:
        settings = dataclasses.replace(settings, placements=tuple(placements))
    plan = _plan(settings)
    frames = [run_jobs(jobs, store, progress=progress, desc=f"{NAME}/{p}").assign(part=p) for p, jobs in plan.items()]
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------------
# The figure
# ------------------------------------------------------------------------------------------------
POSITIONS = ("first layer", "middle layer", "last layer")
MAX_STEP_LINES = 6


def _at_positions(stream: pd.DataFrame) -> pd.DataFrame:
    """The rows of layers 0, L // 2 and L − 1 of each stack, with their POSITIONS name in `column` (a
    layer that is two positions of a shallow stack is in both)."""
    layer, layers = stream["layer"].to_numpy(), stream["layers"].to_numpy()
    picks = zip(POSITIONS, (np.zeros_like(layers), layers // 2, layers - 1))
    return pd.concat([stream[layer == at].assign(column=name) for name, at in picks], ignore_index=True)


def shown_steps(steps: Sequence[int]) -> list[int]:
    """At most MAX_STEP_LINES steps, evenly spread from the first to the last."""
    steps = sorted(set(int(s) for s in steps))
    if len(steps) <= MAX_STEP_LINES:
        return steps
    picks = np.unique(np.round(np.linspace(0, len(steps) - 1, MAX_STEP_LINES)).astype(int))
    return [steps[i] for i in picks]


def _label_log_axis(axis: Any, low: float, high: float) -> None:
    """Plain labels on a log axis, as many as fit: over two decades only the powers of ten; over
    most of one, the minor ticks at 2 and 5 too; within a narrow range, every tick (3 digits)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    axis.set_major_formatter(plain)
    decades = np.log10(high / low) if low > 0 and high > low else 0.0
    if decades > 2:
        axis.set_minor_formatter(NullFormatter())
    elif decades > 0.8:
        lead = lambda v: round(v / 10 ** np.floor(np.log10(v)))
        axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}" if v > 0 and lead(v) in (2, 5) else ""))
    else:
        axis.set_minor_formatter(plain)


def coordcheck_figure(frame: pd.DataFrame, part: str) -> Figure:
    """One sweep's coordinate check: x = width (d_model) or depth (layers), log; y = the mean over
    seeds of RMS(h_t) (rows "activation") and RMS(h_t − h_0) (rows "update"), log; one line per step
    t (darker = earlier). Columns: the stream after the first, middle and last layer (resid_post), and
    the logits; one pair of rows per placement."""
    from matplotlib import colormaps
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    from analysis.plot import figures as F  # lazy: matplotlib only to draw

    if part not in SWEEPS:
        raise ValueError(f"unknown coordinate-check sweep {part!r}; valid: {', '.join(SWEEPS)}")
    x = "d_model" if part == "width" else "layers"
    sel = frame[frame["part"] == part] if "part" in frame else frame
    if sel.empty:
        raise ValueError(f"coordcheck_figure: no rows of the {part} sweep")
    stream = _at_positions(sel[(sel["site"] == "resid_post") & (sel["stack"] != "model")])
    data = pd.concat([stream, sel[sel["site"] == "logits"].assign(column="logits")], ignore_index=True)
    columns = [*POSITIONS, "logits"]
    placements = list(dict.fromkeys(data["placement"]))
    steps = shown_steps(data["step"])
    colors = colormaps["viridis"](np.linspace(0.0, 0.9, len(steps)))
    fig, axes = F.figure_grid(2 * len(placements) * len(columns), ncols=len(columns), panel_size=(3.3, 2.6))
    means = data.groupby(["placement", "quantity", "column", "step", x])["value"].mean()
    for row, (placement, quantity) in enumerate((p, q) for p in placements for q in QUANTITIES):
        for col, column in enumerate(columns):
            ax = axes[row * len(columns) + col]
            for step, color in zip(steps, colors):
                try:
                    line = means.loc[(placement, quantity, column, step)]
                except KeyError:
                    continue
                line = line[np.isfinite(line.to_numpy()) & (line.to_numpy() > 0)]  # Δ at step 0 is 0: off a log axis
                if len(line):
                    ax.plot(line.index, line.to_numpy(), marker="o", ms=3, lw=1.3, color=color, label=f"t={step}")
            ax.set_xscale("log", base=2)  # ticks at the measured sizes, plainly written
            ax.xaxis.set_major_locator(FixedLocator(sorted(set(data[x].astype(float)))))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_yscale("log")
            _label_log_axis(ax.yaxis, *ax.get_ylim())
            ax.grid(True, which="both", alpha=0.3, lw=0.5)
            what = "RMS(h_t)" if quantity == "coord_rms" else "RMS(h_t − h_0)"
            ax.set_title(f"{placement}: {column}", fontsize="small")
            ax.set_xlabel("width (d_model)" if part == "width" else "depth (layers)", fontsize="small")
            if col == 0:
                ax.set_ylabel(what, fontsize="small")
            if row == 0 and col == len(columns) - 1:
                ax.legend(fontsize="x-small", title="step", title_fontsize="x-small")
    fig.suptitle(
        f"Coordinate check over {part}: activation RMS and its change from init on a fixed batch "
        f"(mean of {sel['seed'].nunique()} seeds)",
        fontsize="medium",
    )
    return fig


def _figures(frame: pd.DataFrame) -> dict[str, Figure]:
    parts = [p for p in SWEEPS if "part" not in frame or (frame["part"] == p).any()]
    return {f"coordcheck_{p}": coordcheck_figure(frame, p) for p in parts}


EXPERIMENT = Experiment(
    name=NAME,
    paper="",
    title="Coordinate check (µP's standard plot)",
    summary="Each layer's activation RMS and its change from initialization over the first k AdamW steps "
    "on a fixed batch, across widths and depths, per placement (no claims: the figure is the result).",
    command="lnscope report --experiments coordcheck",
    presets=PRESETS,
    plan=_plan,
    figures=_figures,
    claims=(),
)
