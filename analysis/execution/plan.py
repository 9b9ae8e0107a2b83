"""How lnscope computes a model's numbers, apart from which numbers (models.ModelConfig): the
execution plan.

    plan = default_plan()                     # this process' backend: "cpu", "gpu" or "tpu"
    plan = default_plan("gpu").replace(compute_dtype="bfloat16")
    probe_at_init(cfg, plan=plan); train(cfg, plan=plan)
    model = build_model(cfg, seed, ops=plan.model_ops())

The plan reaches the model only as `models.ModelOps` (its layer loop and projection product,
analysis.execution.ops), applied from outside; seeds and streams are read by the programs that run
models (analysis.probe.api, analysis.train). Every field but `compute_dtype` leaves the numbers
unchanged up to float rounding; `numerics_key()` names what does change them, for a run's identity.
docs/execution.md has the per-backend defaults and why.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jax

from analysis.execution.ops import MixedProjection, PlannedLoop, layout_projection
from models.ops import ModelOps, plain_projection

ComputeDtype = Literal["bfloat16"]
SeedPrograms = Literal["vmapped", "per_seed"]
Backend = Literal["cpu", "gpu", "tpu"]

COMPUTE_DTYPES: tuple[str, ...] = typing.get_args(ComputeDtype)
SEED_PROGRAMS: tuple[str, ...] = typing.get_args(SeedPrograms)
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
# A stack this deep or shallower is unrolled by the CPU plan: deeper ones compile for too long.
CPU_UNROLL_LAYERS = 18
# XLA compile options of the CPU plan, (name, value) pairs: each skips compile work and leaves every
# bit of every result as XLA's defaults give it (tests/analysis/execution/test_compiler_options.py;
# benchmarks/compile_options.py measures candidates: most that skip work change the numbers).
# The concurrency-optimized scheduler orders a program for the thunk executor's parallelism; lnscope's
# programs (chains of dependent small operations) run no faster for it, and in the largest ones its
# search costs compile time (benchmarks/README.md, "Changes tried").
CPU_COMPILER_OPTIONS: tuple[tuple[str, bool | int | str], ...] = (
    ("xla_cpu_enable_concurrency_optimized_scheduler", False),
)
# Fields models.ModelConfig held before this plan took them over (configs stored then carry them).
RETIRED_MODEL_FIELDS: tuple[str, ...] = ("unroll_layers", "compute_dtype", "scan_remat")


@dataclass(frozen=True)
class ExecutionPlan:
    """How a model runs: its layer loop, recomputation, compute dtype, and how seeds are batched.

    Attributes:
        unroll_layers: deepest stack run as an unrolled loop; deeper ones scan, 0 = always scan.
        grad_barrier: materialize an unrolled layer's input gradient; keeps XLA from recomputing
            the residual-gradient chain inside each layer's weight-gradient products.
        remat: recompute scanned layers' forward in the backward pass; nothing saved but inputs.
        compute_dtype: projections' input dtype; "bfloat16" accumulates in float32 and needs
            float32 parameters, None computes in the parameters' dtype.
        cpu_weight_layout: weight gradients as standard-layout products on CPUs; the same values.
        seed_programs: seeds in one vmapped program, or a program step per seed.
        streams: programs run at once on threads; None: $LNSCOPE_STREAMS, else one per CPU core on
            a CPU and 1 on an accelerator.
        cpu_compiler_options: compile with XLA options that spare compile work and keep every bit
            (CPU_COMPILER_OPTIONS, through `jit`); off: XLA's own options.
    """

    unroll_layers: int = CPU_UNROLL_LAYERS
    grad_barrier: bool = True
    remat: bool = True
    compute_dtype: ComputeDtype | None = None
    cpu_weight_layout: bool = True
    seed_programs: SeedPrograms = "per_seed"
    streams: int | None = None
    cpu_compiler_options: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.unroll_layers, int) or isinstance(self.unroll_layers, bool) or self.unroll_layers < 0:
            raise ValueError(f"unroll_layers must be an integer >= 0 (0 = always scan), got {self.unroll_layers!r}")
        for name in ("grad_barrier", "remat", "cpu_weight_layout", "cpu_compiler_options"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.compute_dtype is not None and self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"unknown compute_dtype {self.compute_dtype!r}; valid choices: None, {', '.join(COMPUTE_DTYPES)}"
            )
        if self.seed_programs not in SEED_PROGRAMS:
            raise ValueError(f"unknown seed_programs {self.seed_programs!r}; valid choices: {', '.join(SEED_PROGRAMS)}")
        if self.streams is not None and (
            not isinstance(self.streams, int) or isinstance(self.streams, bool) or self.streams < 1
        ):
            raise ValueError(f"streams must be an integer >= 1 or None (the platform's default), got {self.streams!r}")

    def replace(self, **changes: Any) -> ExecutionPlan:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def one_shot(self) -> ExecutionPlan:
        """This plan for a program compiled to run once (an init study, one probe of a model): every
        stack scanned, since an unrolled loop's longer compile pays off only over many calls."""
        return self.replace(unroll_layers=0)

    def compiler_options(self) -> dict[str, bool | int | str] | None:
        """The XLA options this plan's programs are compiled with (None: XLA's own)."""
        return dict(CPU_COMPILER_OPTIONS) if self.cpu_compiler_options else None

    def jit(self, fn: Callable, **kwargs: Any) -> Callable:
        """`jax.jit(fn, **kwargs)` compiled with this plan's `compiler_options()`."""
        return jax.jit(fn, compiler_options=self.compiler_options(), **kwargs)

    def check_model(self, dtype: str) -> None:
        """ValueError when this plan cannot run a model whose parameters are `dtype`."""
        if self.compute_dtype is not None and dtype != "float32":
            raise ValueError(f"compute_dtype={self.compute_dtype!r} needs float32 parameters, got dtype={dtype!r}")

    def model_ops(self) -> ModelOps:
        """The layer loop and projection product a model runs with under this plan."""
        loop = PlannedLoop(unroll_layers=self.unroll_layers, barrier=self.grad_barrier, remat=self.remat)
        if self.compute_dtype is not None:
            projection = MixedProjection(self.compute_dtype, layout=self.cpu_weight_layout)
        else:
            projection = layout_projection if self.cpu_weight_layout else plain_projection
        return ModelOps(layer_loop=loop, projection=projection)

    def numerics_key(self) -> dict[str, Any]:
        """The fields that change a model's numbers beyond float rounding, for a run's identity."""
        return {"compute_dtype": self.compute_dtype}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def current_backend() -> str:
    """JAX's default backend of this process ("cpu", "gpu" or "tpu")."""
    return jax.default_backend()


def default_plan(backend: str | None = None) -> ExecutionPlan:
    """The plan for `backend` (default: this process' JAX backend).

    cpu: layers unrolled up to CPU_UNROLL_LAYERS with gradient barriers, deeper stacks scanned and
        recomputed in the backward pass, the weight-gradient layout, a program per seed, and
        CPU_COMPILER_OPTIONS.
    gpu, tpu: every stack scanned and nothing recomputed, autodiff's layout, seeds vmapped, XLA's
        own compile options.
    Every backend computes in the parameters' dtype (bfloat16 compute changes the numbers: a choice).
    """
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid choices: {', '.join(BACKENDS)}")
    if (current_backend() if backend is None else backend) == "cpu":  # any other is an accelerator
        return ExecutionPlan()
    return ExecutionPlan(
        unroll_layers=0, remat=False, cpu_weight_layout=False, seed_programs="vmapped", cpu_compiler_options=False
    )
