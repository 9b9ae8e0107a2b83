"""Learning-rate transfer across depth: a learning-rate sweep at several depths per placement, the best
learning rate of each depth, and how far it moves from the shallowest depth to the deepest.

For every placement p, depth L and learning rate η = 2^k of a log2-spaced grid, one decoder-only
model is trained for a fixed number of constant-lr AdamW steps on the Markov task (the training
room's compiled step, seeds vmapped; every η of one (p, L) reuses one compiled program, since the
learning rate is a runtime argument). Per seed the result is

    final_train_loss = mean of the training loss ℒ_s over the last `smooth` steps s

(+inf for a seed that diverged: it did not train, which counts against its learning rate). The
training batches are fresh draws from a fixed chain, so the training loss is an unbiased estimate of
the population loss; the smoothing window only averages batch noise.

The best log2 learning rate of a depth is read off the seed-mean loss curve ℓ(k):

    i* = argmin_i ℓ(k_i)
    k* = k_i* − (h/2)·(ℓ_{i*+1} − ℓ_{i*−1}) / (ℓ_{i*+1} − 2ℓ_{i*} + ℓ_{i*−1})

the vertex of the parabola through the grid minimum and its two neighbours (h the grid spacing; it
lies within h/2 of k_i*). At the grid's edge, or where a neighbour is not finite (a diverged
learning rate), k* = k_i*. The shift of placement p is k*(L_max) − k*(L_min), in octaves of the
learning rate (a shift of −2 means the deepest model wants a learning rate 4 times smaller).

CompleteP (Dey et al. 2025, arXiv 2505.01618) promises that with α = 1 the learning rate tuned at
L_base transfers to deeper models (shift ≈ 0), while standard parametrization's best learning rate
moves with depth. analysis/experiments/dey2025.py states the claim; this module is its machinery.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from analysis.execution import default_plan
from analysis.experiments.claims import Feature, Statistic, custom
from analysis.probe.tidy import COLUMNS, DTYPES
from analysis.train import OptimConfig, TaskConfig, TrainConfig
from analysis.train.config import to_dict
from analysis.train.step import Runtime, program
from analysis.train.tasks import prepare
from models import PLACEMENTS, ModelConfig

if TYPE_CHECKING:
    from matplotlib.figure import Figure

QUANTITY = "final_train_loss"  # the rows' quantity: the smoothed final training loss per seed


@dataclass(frozen=True)
class LRSweepSettings:
    """One preset of the learning-rate sweep.

    Attributes:
        depths: layers L of the sweep (the shift reads the first and the last).
        base_depth: CompleteP's L_base (its multiplier (L/L_base)^−α is 1 there).
        log2_lrs: the grid of k, η = 2^k; evenly spaced, ascending (the parabola needs equal spacing).
        width, head_dim, ff_mult: d_model, heads = d_model / head_dim, d_ff = ff_mult · d_model.
        vocab, seq_len, batch_size, markov_sharpness: the Markov task (analysis.train.tasks).
        steps: constant-lr AdamW updates per run (no warm-up).
        smooth: the final loss averages the training loss of the last `smooth` steps.
        seeds: model seeds first_seed .. first_seed + seeds − 1, vmapped together.
        first_seed: the first model seed.
        placements: the placements compared, any of models.PLACEMENTS.
        alpha: CompleteP's α (1: CompleteP; ½: depth-µP).
    """

    depths: tuple[int, ...]
    base_depth: int
    log2_lrs: tuple[float, ...]
    width: int
    head_dim: int
    ff_mult: int
    vocab: int
    seq_len: int
    batch_size: int
    markov_sharpness: float
    steps: int
    smooth: int
    seeds: int
    first_seed: int = 0
    placements: tuple[str, ...] = ("pre", "completep")
    alpha: float = 1.0

    def __post_init__(self) -> None:
        for name in ("depths", "log2_lrs", "placements"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)):
                raise ValueError(f"{name} must be a tuple, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        unknown = [p for p in self.placements if p not in PLACEMENTS]
        if unknown or not self.placements:
            raise ValueError(f"placements {list(self.placements)}: unknown {unknown}; valid: {', '.join(PLACEMENTS)}")
        if len(self.depths) < 2 or list(self.depths) != sorted(set(self.depths)):
            raise ValueError(f"depths must be at least two ascending distinct depths, got {self.depths!r}")
        if len(self.log2_lrs) < 3:
            raise ValueError(f"log2_lrs needs at least 3 points for the parabola, got {self.log2_lrs!r}")
        steps = np.diff(np.asarray(self.log2_lrs, float))
        if not (steps > 0).all() or not np.allclose(steps, steps[0]):
            raise ValueError(f"log2_lrs must be evenly spaced and ascending, got {self.log2_lrs!r}")
        names = ("base_depth", "width", "head_dim", "ff_mult", "vocab", "seq_len", "batch_size", "steps", "smooth")
        for name, value in [
            *((n, getattr(self, n)) for n in names),
            ("seeds", self.seeds),
            *(("depths", d) for d in self.depths),
        ]:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must hold integers >= 1, got {value!r}")
        if self.width % self.head_dim:
            raise ValueError(f"width {self.width} must be a multiple of head_dim={self.head_dim}")
        if self.smooth > self.steps:
            raise ValueError(f"smooth={self.smooth} is longer than the run (steps={self.steps})")

    def model(self, placement: str, layers: int) -> ModelConfig:
        # Every arm gets CompleteP's α and L_base: only the placements that declare the multiplier
        # read them (models.placements), so the experiment names no placement here.
        return ModelConfig(
            arch="decoder",
            placement=placement,
            layers=layers,
            d_model=self.width,
            heads=self.width // self.head_dim,
            d_ff=self.ff_mult * self.width,
            vocab=self.vocab,
            max_len=self.seq_len,
            completep_alpha=self.alpha,
            completep_base_layers=self.base_depth,
        )

    def train_config(self, model: ModelConfig) -> TrainConfig:
        """The run of `model` at the grid's first learning rate (the job sets each η in turn)."""
        return TrainConfig(
            model=model,
            task=TaskConfig(
                name="markov",
                seq_len=self.seq_len,
                batch_size=self.batch_size,
                markov_sharpness=self.markov_sharpness,
            ),
            optim=OptimConfig(lr=2.0 ** self.log2_lrs[0], schedule="constant"),
            steps=self.steps,
            seeds=tuple(range(self.first_seed, self.first_seed + self.seeds)),
            probe_every=0,
            eval_every=0,
        )


@dataclass(frozen=True)
class LRSweepJob:
    """Every learning rate of one (placement, depth) model over its seeds: rows of final_train_loss
    with columns `log2_lr` and `lr` (analysis.experiments.runs computes and stores it once per spec)."""

    variant: str
    config: TrainConfig
    log2_lrs: tuple[float, ...]
    smooth: int
    columns: tuple[tuple[str, Any], ...] = field(default=())

    kind = "lrsweep"
    version = 1  # of `sweep_learning_rates`: bump when what it computes changes

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": self.version,
            "config": to_dict(self.config),
            "log2_lrs": [float(k) for k in self.log2_lrs],
            "smooth": self.smooth,
        }

    def compute(self) -> pd.DataFrame:
        return sweep_learning_rates(self.config, self.log2_lrs, self.smooth)


def sweep_learning_rates(cfg: TrainConfig, log2_lrs: Sequence[float], smooth: int) -> pd.DataFrame:
    """Train every seed of `cfg` at each η = 2^k of `log2_lrs` for cfg.steps constant-lr steps (one
    compiled program for all η) and return tidy rows: per (η, seed) the mean training loss of the last
    `smooth` steps (+inf where the seed diverged), quantity "final_train_loss", step = cfg.steps."""
    # the layers scanned, not unrolled: short runs are compile-bound and the sweep compiles per depth
    plan = default_plan().replace(unroll_layers=0)
    data = prepare(cfg.task, cfg.model)
    prog = program(cfg, data, plan)
    seeds = jnp.asarray(cfg.seeds, jnp.uint32)
    blocks = []
    for k in log2_lrs:
        run = cfg.replace(**{"optim.lr": float(2.0**k)})
        rt = Runtime.of(run)
        states = prog.init(seeds)
        losses = []
        for start in range(0, cfg.steps, prog.chunk):
            n = min(prog.chunk, cfg.steps - start)
            states, metrics = prog.plain(states, seeds, start, n, data.arrays, rt)
            losses.append(np.asarray(jax.device_get(metrics["loss"]))[:, :n])
        loss = np.concatenate(losses, axis=1)  # (S, steps)
        alive = np.asarray(jax.device_get(states.alive), bool)
        final = np.where(alive, loss[:, -smooth:].mean(axis=1), np.inf)
        blocks.append(pd.DataFrame({"seed": np.asarray(cfg.seeds, np.int64), "value": final, "log2_lr": float(k)}))
    frame = pd.concat(blocks, ignore_index=True)
    model = cfg.model
    frame = frame.assign(
        lr=2.0 ** frame["log2_lr"],
        run="",
        arch=model.arch,
        placement=model.placement,
        norm=model.norm,
        layers=model.layers,
        d_model=model.d_model,
        step=cfg.steps,
        stack="model",
        layer=-1,
        other_layer=-1,
        site="loss",
        quantity=QUANTITY,
    )
    return frame[[*COLUMNS, "log2_lr", "lr"]].astype({**DTYPES, "log2_lr": np.float64, "lr": np.float64})


def plan_jobs(s: LRSweepSettings) -> list[LRSweepJob]:
    """One job per (placement, depth), placements outer."""
    return [
        LRSweepJob(placement, s.train_config(s.model(placement, depth)), s.log2_lrs, s.smooth)
        for placement in s.placements
        for depth in s.depths
    ]


# ------------------------------------------------------------------------------------------------
# The statistic: best log2 learning rate per depth, and its shift across depth
# ------------------------------------------------------------------------------------------------
def best_log2_lr(losses: np.ndarray, log2_lrs: Sequence[float]) -> np.ndarray:
    """The best log2 learning rate k* of loss curves `losses` (..., n) over the evenly spaced grid
    `log2_lrs` (n,): the vertex of the parabola through the grid minimum and its two neighbours, or the
    grid minimum itself at the grid's edge or next to a non-finite loss (module docstring); NaN where
    no loss is finite. Shape (...)."""
    losses = np.asarray(losses, float)
    grid = np.asarray(log2_lrs, float)
    n = grid.size
    if losses.shape[-1] != n:
        raise ValueError(f"losses have {losses.shape[-1]} learning rates, the grid {n}")
    h = (grid[-1] - grid[0]) / (n - 1)
    finite = np.isfinite(losses)
    i = np.argmin(np.where(finite, losses, np.inf), axis=-1)
    take = lambda j: np.take_along_axis(losses, np.clip(j, 0, n - 1)[..., None], axis=-1)[..., 0]
    left, mid, right = take(i - 1), take(i), take(i + 1)
    with np.errstate(all="ignore"):  # inf − inf next to a diverged rate: not `inner`, never used
        curve = right - 2.0 * mid + left
        inner = (i > 0) & (i < n - 1) & np.isfinite(left) & np.isfinite(right) & (curve > 0)
        offset = np.where(inner, -0.5 * h * (right - left) / np.where(inner, curve, 1.0), 0.0)
    best = grid[i] + offset
    return np.where(finite.any(axis=-1), best, np.nan)


def _curve_name(placement: str, depth: int, k: float) -> str:
    return f"{placement}@{depth}:2^{k:g}"


def loss_feature(part: str, placement: str, depth: int, k: float) -> Feature:
    """Per seed: the smoothed final training loss of `placement` at depth `depth` and η = 2^k."""
    return Feature(
        _curve_name(placement, depth, k),
        {"part": part, "variant": placement, "layers": depth, "log2_lr": float(k), "quantity": QUANTITY},
    )


def _best_per_depth(
    m: dict[str, np.ndarray], placement: str, depths: Sequence[int], grid: Sequence[float]
) -> np.ndarray:
    """k* of each depth from seed means: (..., len(depths))."""
    curves = np.stack(
        [np.stack([m[_curve_name(placement, d, k)][..., 0] for k in grid], axis=-1) for d in depths], axis=-2
    )
    return best_log2_lr(curves, grid)


def shift_of(best: np.ndarray) -> np.ndarray:
    """k*(L_max) − k*(L_min) from best (..., n_depths) with depths ascending."""
    return best[..., -1] - best[..., 0]


def best_lr_shift(part: str, placement: str, depths: Sequence[int], grid: Sequence[float]) -> Statistic:
    """The shift of one placement's best log2 learning rate from depth min(depths) to max(depths)."""
    depths, grid = tuple(depths), tuple(float(k) for k in grid)
    features = tuple(loss_feature(part, placement, d, k) for d in depths for k in grid)
    return custom(
        "best_lr_shift",
        f"k*(L={depths[-1]}) − k*(L={depths[0]}), octaves of the best learning rate ({placement}; k* = vertex of "
        "the parabola through the seed-mean loss minimum over the log2 lr grid)",
        features,
        lambda m: shift_of(_best_per_depth(m, placement, depths, grid)),
    )


def shift_gap(part: str, moving: str, steady: str, depths: Sequence[int], grid: Sequence[float]) -> Statistic:
    """|shift(moving)| − |shift(steady)|: positive when `steady`'s best learning rate moves less
    across depth than `moving`'s."""
    depths, grid = tuple(depths), tuple(float(k) for k in grid)
    features = tuple(loss_feature(part, p, d, k) for p in (moving, steady) for d in depths for k in grid)

    def combine(m: dict[str, np.ndarray]) -> np.ndarray:
        shifts = [np.abs(shift_of(_best_per_depth(m, p, depths, grid))) for p in (moving, steady)]
        return shifts[0] - shifts[1]

    return custom(
        "best_lr_shift_gap",
        f"|shift of the best log2 lr from L={depths[0]} to L={depths[-1]}| of {moving} minus that of {steady} "
        "(octaves; k* = vertex of the parabola through the seed-mean loss minimum over the log2 lr grid)",
        features,
        combine,
    )


# ------------------------------------------------------------------------------------------------
# The figure
# ------------------------------------------------------------------------------------------------
ZOOM = 0.1  # nats above the lowest loss shown in the figure's lower row, where the minima are


def lr_sweep_figure(frame: pd.DataFrame, title: str) -> Figure:
    """Final training loss against log2 learning rate, one line per depth (seed mean), one column per
    placement; the upper row shows the whole grid with the min-max band over seeds (× marks a learning
    rate where a seed diverged), the lower row the ZOOM nats above the lowest loss, with the best
    learning rate k* of each depth marked (▼ and a dotted line)."""
    from matplotlib import colormaps

    from analysis.plot import figures as F  # lazy: matplotlib only to draw

    sel = frame[frame["quantity"] == QUANTITY]
    if sel.empty:
        raise ValueError(f"lr_sweep_figure: no {QUANTITY} rows")
    placements = list(dict.fromkeys(sel["variant"]))
    depths = sorted(sel["layers"].unique())
    grid = np.asarray(sorted(sel["log2_lr"].unique()), float)
    colors = colormaps["viridis"](np.linspace(0.0, 0.85, len(depths)))
    n = len(placements)
    fig, axes = F.figure_grid(2 * n, ncols=n, panel_size=(4.6, 3.2))
    finite = sel[np.isfinite(sel["value"])]["value"]
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    pad = 0.05 * (high - low or 1.0)
    for col, placement in enumerate(placements):
        whole, zoom = axes[col], axes[n + col]
        mine = sel[sel["variant"] == placement]
        for depth, color in zip(depths, colors):
            d = mine[mine["layers"] == depth].groupby("log2_lr")["value"]
            mean, lo, hi = (v.reindex(grid).to_numpy() for v in (d.mean(), d.min(), d.max()))
            ok = np.isfinite(mean)
            for ax in (whole, zoom):
                ax.plot(grid[ok], mean[ok], marker="o", ms=3, lw=1.3, color=color, label=f"L = {depth}")
            # the seeds' spread is mostly a per-seed offset shared by every η: drawn above, where it
            # does not hide the minima below
            whole.fill_between(grid[ok], lo[ok], hi[ok], color=color, alpha=0.15, lw=0)
            whole.plot(grid[~ok], np.full((~ok).sum(), high + pad), marker="x", color=color, ms=6, ls="none")
            best = float(best_log2_lr(mean, grid))
            if math.isfinite(best):
                zoom.plot([best], [low - 0.1 * ZOOM], marker="v", color=color, ms=8, ls="none")
                zoom.axvline(best, color=color, lw=0.9, ls=":")
        whole.set_ylim(low - pad, high + 2 * pad)
        zoom.set_ylim(low - 0.15 * ZOOM, low + ZOOM)
        whole.set_title(f"{placement}: the whole grid", fontsize="medium")
        zoom.set_title(f"{placement}: near the minimum (▼ = best η)", fontsize="medium")
        for ax in (whole, zoom):
            ax.set_xticks(grid)
            ax.set_xticklabels([f"2^{k:g}" for k in grid], fontsize="small")
            ax.set_xlabel("learning rate η (log2 axis)")
            ax.set_ylabel("final training loss (nats/token)")
            ax.grid(True, alpha=0.3, lw=0.5)
        whole.legend(fontsize="small", title="depth (× = diverged)", title_fontsize="small", loc="upper center")
    fig.suptitle(title, fontsize="medium")
    return fig
