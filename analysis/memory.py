"""Will it fit? A size check before compute: the memory a probe or training run needs, estimated from
its config, against the memory this process may use.

    check_fits(probe_estimate(cfg, seeds=4, batch_size=8, seq_len=32), "lnscope probe")
    check_fits(train_estimate(train_cfg), "lnscope train")

Why: an oversized config otherwise grows until the kernel kills the process (no message), hangs in
a device transfer under an address-space limit, or fails after compiling with a long XLA traceback.
The estimate is closed-form (no tracing, no compile): parameters, the gradients and optimizer moments
beside them, and the activations a backward pass keeps (per layer: a few (B, T, d) and (B, T, d_ff)
tensors and the (B, H, T, T) attention scores; with the execution plan's `remat` only each scanned
layer's input and one layer's rest), times the seeds computed at once. It is a lower
bound of what XLA allocates (fused temporaries and the runtime come on top), so a refusal is never
a false alarm; a config just under the limit can still fail in XLA, whose own error then says so.

The limit (`memory_limit`) is the least of: the device's free memory on an accelerator; on a CPU,
the kernel's MemAvailable, the cgroup's memory limit less its usage, and RLIMIT_AS less the address
space already mapped.
"""

from __future__ import annotations

import resource
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from analysis.execution import ExecutionPlan, default_plan
from analysis.runtime import default_streams
from models import ModelConfig

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
# Activations a backward pass keeps per layer and token, in units of d_model (inputs of the norms and
# projections, queries, keys, values, attention output, residual stream) and of d_ff (the FFN's
# hidden layer before and after its activation); and per head and (query, key) pair (scores, weights).
ACT_PER_D, ACT_PER_DFF, ACT_PER_SCORE = 8, 2, 2


@dataclass(frozen=True)
class Estimate:
    """Bytes a computation needs at least: `parts` {name: bytes} (e.g. parameters, activations)."""

    what: str
    parts: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(b for _, b in self.parts)

    def describe(self) -> str:
        return ", ".join(f"{name} {human(b)}" for name, b in self.parts if b)


def human(n: float) -> str:
    """Bytes as B, KB, MB, GB, TB (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def _stacks(cfg: ModelConfig) -> list[tuple[int, bool]]:
    """(layers, has cross-attention) of each stack of the model."""
    if cfg.arch == "encdec":
        return [(cfg.n_enc_layers, False), (cfg.n_dec_layers, True)]
    return [(cfg.layers, False)]


def param_count(cfg: ModelConfig) -> int:
    """Parameters of `cfg`'s model: attention (4 d² per attention block), FFN (2 d d_ff), norms,
    biases, token embedding, output head (unless tied) and learned positions."""
    d, f = cfg.d_model, cfg.d_ff
    attn = 4 * d * d + (4 * d if cfg.bias else 0)
    mlp = 2 * d * f + ((f + d) if cfg.bias else 0)
    total = 0
    for layers, cross in _stacks(cfg):
        per_layer = attn * (2 if cross else 1) + mlp + 2 * d * (3 if cross else 2)  # norm scales and shifts
        total += layers * per_layer + 2 * d  # the final norm
    total += cfg.vocab * d * (1 if cfg.tie_embeddings else 2)
    total += cfg.max_len * d if cfg.pos == "learned" else 0
    return total


def activation_count(cfg: ModelConfig, batch_size: int, seq_len: int, plan: ExecutionPlan | None = None) -> int:
    """Values a backward pass of one model keeps over a (batch_size, seq_len) batch (lower bound), its
    stacks run as `plan` says (default: this backend's)."""
    plan = default_plan() if plan is None else plan
    tokens = batch_size * seq_len
    total = 0
    for layers, cross in _stacks(cfg):
        blocks = 2 if cross else 1
        per_layer = tokens * ACT_PER_D * cfg.d_model * blocks + tokens * ACT_PER_DFF * cfg.d_ff
        per_layer += ACT_PER_SCORE * batch_size * cfg.heads * seq_len * seq_len * blocks
        scanned = layers > plan.unroll_layers
        if scanned and plan.remat:  # only each layer's input is kept, one layer's rest at a time
            total += layers * tokens * cfg.d_model + per_layer
        else:
            total += layers * per_layer
    return total + 2 * tokens * cfg.vocab  # logits and their gradient


@dataclass(frozen=True)
class ProbeMemory:
    """What one probe holds besides the shared forward and backward pass: its memory declaration,
    read by `probe_estimate` (each analysis.probe.registry.Probe carries one as `memory`).

    Attributes:
        param_grads: it reads ∂ℒ/∂θ, one gradient per parameter (a pass that only needs site
            gradients leaves the parameter gradients unused, and XLA drops them).
        stream_stack: it compares every layer's stream: resid_pre and resid_post stacked over the
            layers, (L, B, T, d) each, held at once (probes that reduce inside each layer do not).
        layer_pairs: (L, L) matrices it returns (CKA and its null: 2).
    """

    param_grads: bool = False
    stream_stack: bool = False
    layer_pairs: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.layer_pairs, int) or isinstance(self.layer_pairs, bool) or self.layer_pairs < 0:
            raise ValueError(f"layer_pairs must be an integer >= 0, got {self.layer_pairs!r}")


# The estimate's default probe set: one that reads the parameter gradients (the cheap probes do).
PARAM_GRADS = (ProbeMemory(param_grads=True),)


def probe_result_count(cfg: ModelConfig, batch_size: int, seq_len: int, probes: tuple[ProbeMemory, ...]) -> int:
    """Values the similarity probes hold besides the backward pass (lower bound): the stream at every
    layer (resid_pre and resid_post, stacked (L, B, T, d)) that they compare, and their (L, L)
    matrices (CKA's and its null's). The L² grows fastest: a deep stack's probe program is bounded by it."""
    tokens = batch_size * seq_len
    pairs = sum(p.layer_pairs for p in probes)
    total = 0
    for layers, _ in _stacks(cfg):
        if any(p.stream_stack for p in probes):
            total += 2 * layers * tokens * cfg.d_model
        total += pairs * layers * layers
    return total


def probe_estimate(
    cfg: ModelConfig,
    seeds: int,
    batch_size: int,
    seq_len: int,
    *,
    probes: Iterable[ProbeMemory] = PARAM_GRADS,
    plan: ExecutionPlan | None = None,
    seed_chunk: int | None = None,
) -> Estimate:
    """`probe_at_init`'s memory under `plan` (default: this backend's): per seed computed at once, its
    parameters, their gradients (when a probe reads them), its activations and what the similarity
    probes hold (probe_result_count) (seeds at once: the plan's streams, each `seed_chunk` seeds, or
    all of them when the plan vmaps seeds). `probes`: the selected probes' memory declarations
    (analysis.probe.registry.probe_memory(names) reads them from the registry)."""
    probes = tuple(probes)
    if not all(isinstance(p, ProbeMemory) for p in probes):
        raise TypeError(
            f"probes must be ProbeMemory declarations (analysis.probe.registry.probe_memory), got {probes!r}"
        )
    plan = (default_plan() if plan is None else plan).one_shot()
    chunk = seed_chunk or (seeds if plan.seed_programs == "vmapped" else 1)
    at_once = min(seeds, chunk * (plan.streams or default_streams()))
    size = DTYPE_BYTES.get(cfg.dtype, 4)
    params = param_count(cfg) * size
    return Estimate(
        f"probing {at_once} of {seeds} seeds at once",
        (
            ("parameters", params * at_once),
            ("gradients", params * at_once if any(p.param_grads for p in probes) else 0),
            ("activations", activation_count(cfg, batch_size, seq_len, plan) * size * at_once),
            ("probe results", probe_result_count(cfg, batch_size, seq_len, probes) * size * at_once),
        ),
    )


def train_estimate(cfg: Any, *, at_once: int | None = None, plan: ExecutionPlan | None = None) -> Estimate:
    """A training run's memory (cfg: analysis.train.TrainConfig): every seed's parameters and two
    AdamW moments, and per seed computed at once (`at_once`, default: every seed) its gradients and
    activations."""
    seeds = len(cfg.seeds)
    at_once = seeds if at_once is None else min(seeds, at_once)
    size = DTYPE_BYTES.get(cfg.model.dtype, 4)
    params = param_count(cfg.model) * size
    activations = activation_count(cfg.model, cfg.task.batch_size, cfg.task.seq_len, plan) * size * at_once
    return Estimate(
        f"training {seeds} seeds, {at_once} at once",
        (
            ("parameters", params * seeds),
            ("optimizer moments", 2 * params * seeds),
            ("gradients", params * at_once),
            ("activations", activations),
        ),
    )


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """The cgroup's memory limit less its usage (v2, else v1), or None where there is no limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            base = f"/sys/fs/cgroup{path.rstrip('/')}"
            limit, used = _read_int(f"{base}/memory.max"), _read_int(f"{base}/memory.current")
        elif "memory" in controllers.split(","):
            base = f"/sys/fs/cgroup/memory{path.rstrip('/')}"
            limit, used = _read_int(f"{base}/memory.limit_in_bytes"), _read_int(f"{base}/memory.usage_in_bytes")
        else:
            continue
        if limit is not None and limit < 1 << 60:  # "max" or v1's huge number: no limit
            return max(0, limit - (used or 0))
    return None


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _address_space_room() -> int | None:
    """RLIMIT_AS less the address space this process already maps, or None without a limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    mapped = 0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                mapped = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - mapped)


def memory_limit() -> tuple[int, str] | None:
    """(bytes this process may still allocate for a computation, where that limit comes from), or
    None where nothing is known."""
    if jax.default_backend() != "cpu":
        stats = jax.devices()[0].memory_stats() or {}
        if "bytes_limit" in stats:
            return stats["bytes_limit"] - stats.get("bytes_in_use", 0), f"free memory of {jax.devices()[0]}"
    found = [
        (room, name)
        for room, name in (
            (_mem_available(), "the machine's available memory (MemAvailable)"),
            (_cgroup_room(), "the cgroup's memory limit"),
            (_address_space_room(), "the address-space limit (ulimit -v)"),
        )
        if room is not None
    ]
    return min(found) if found else None


class TooLarge(ValueError):
    """A computation refused before compute: its estimate exceeds the memory this process may use."""


def check_fits(estimate: Estimate, command: str = "this computation", limit: tuple[int, str] | None = None) -> None:
    """Raise TooLarge (one line: the estimate, its parts and the limit) when `estimate` exceeds
    `limit` (default `memory_limit()`)."""
    limit = memory_limit() if limit is None else limit
    if limit is None or estimate.total <= limit[0]:
        return
    raise TooLarge(
        f"{command} needs at least {human(estimate.total)} ({estimate.what}: {estimate.describe()}), "
        f"more than the {human(limit[0])} of {limit[1]}; use fewer or smaller layers, a smaller "
        f"batch, or fewer seeds at once"
    )


def compiled_bytes(compiled: Any) -> int | None:
    """XLA's own count for a compiled program (`jax.jit(f).lower(...).compile()`): arguments, outputs
    and temporaries, or None where the backend does not say."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if stats is None:
        return None
    return int(
        stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    )


def check_train_memory(
    cfg: Any, mode: str, *, streams: int | None = None, devices: list | None = None, plan: ExecutionPlan | None = None
) -> None:
    """`check_fits` for a training run of `cfg` whose seeds are computed `mode`-wise
    (analysis.train.seeds: "per_seed", `streams` at once; "vmapped", all at once, sharded over `devices`)."""
    if mode == "per_seed":
        at_once = streams or default_streams()
    else:
        at_once = len(cfg.seeds)
    estimate = train_estimate(cfg, at_once=at_once, plan=plan)
    if mode == "vmapped":  # each device holds its share of the seeds (the largest count dividing them)
        n = len(devices if devices is not None else jax.devices())
        share = max(k for k in range(1, n + 1) if len(cfg.seeds) % k == 0)
    if mode == "vmapped" and share > 1:
        estimate = Estimate(f"{estimate.what}, over {share} devices", tuple((n, b // share) for n, b in estimate.parts))
    check_fits(estimate, "training")
