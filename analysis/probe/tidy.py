"""Probe results -> one tidy long DataFrame (one row per observation).

Columns (documented contract for figures, checks and reports):
    run          str    name of the run (free text, e.g. "init/post/encdec18")
    arch         str    encoder | decoder | encdec
    placement    str    placement of the stack the row belongs to (enc_placement for the encoder)
    norm         str    norm in every slot
    layers       int    number of layers of that stack
    d_model      int
    seed         int
    step         int    training step (0 = initialization)
    stack        str    encoder | decoder | model (shared embedding / head / whole-model scalars)
    layer        int    0 = bottom; -1 for stack-level rows (final norm, embedding, stack output)
    site         str    probe site or parameter group (see analysis.probe.probes / models.sites)
    quantity     str    probe name (act_grad_norm, param_grad_norm, cka, ...)
    value        float  the measurement (NaN/Inf kept: a diverged run is a result)
    other_layer  int    second layer of pairwise quantities (cka, cka_null); -1 otherwise
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from models import ModelConfig

COLUMNS = (
    "run", "arch", "placement", "norm", "layers", "d_model", "seed", "step",
    "stack", "layer", "site", "quantity", "value", "other_layer",
)  # fmt: skip
PAIRWISE = frozenset({"cka", "cka_null"})
DTYPES = {
    "run": object, "arch": object, "placement": object, "norm": object, "layers": np.int64,
    "d_model": np.int64, "seed": np.int64, "step": np.int64, "stack": object, "layer": np.int64,
    "site": object, "quantity": object, "value": np.float64, "other_layer": np.int64,
}  # fmt: skip


def _per_seed(arr: Any, n: int, what: str) -> np.ndarray:
    """arr as an array whose leading axis is the seed axis, or a ValueError naming `what`."""
    arr = np.asarray(arr)
    if arr.ndim == 0 or arr.shape[0] != n:
        raise ValueError(f"{what}: leading (seed) axis of shape {arr.shape} does not match {n} seed(s)")
    return arr


def _stack_meta(cfg: ModelConfig, stack: str) -> tuple[str, int]:
    if stack == "encoder":
        return cfg.enc_placement or cfg.placement, cfg.n_enc_layers
    if stack == "decoder":
        return cfg.placement, cfg.n_dec_layers
    return cfg.placement, max(cfg.n_enc_layers if cfg.arch != "decoder" else 0, cfg.n_dec_layers if cfg.arch != "encoder" else 0)


def to_frame(
    result: dict, cfg: ModelConfig, seeds: Iterable[int], *, run: str = "", step: int = 0
) -> pd.DataFrame:
    """Tidy rows from a probe result whose arrays carry a leading seed axis (len(seeds))."""
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    # columns built as numpy blocks, one per (quantity, stack, site), joined once: no per-row Python
    # (a 1000-layer study has 2·10⁶ rows, a 32-seed study ~10⁵)
    blocks: dict[str, list[np.ndarray]] = {c: [] for c in ("seed", "stack", "layer", "site", "quantity", "value",
                                                           "other_layer", "placement", "layers")}  # fmt: skip

    def emit(stack, quantity, site, values, layer, other):
        # values: (n_seeds, k) with matching layer/other arrays of length k
        k = values.shape[1]
        placement, stack_layers = _stack_meta(cfg, stack)
        constant = lambda v: np.full(n * k, v, dtype=object if isinstance(v, str) else np.int64)
        blocks["seed"].append(np.repeat(np.asarray(seeds, np.int64), k))
        blocks["layer"].append(np.tile(np.asarray(layer, np.int64), n))
        blocks["other_layer"].append(np.tile(np.asarray(other, np.int64), n))
        blocks["value"].append(values.reshape(-1).astype(np.float64))
        for column, v in (("stack", stack), ("site", site), ("quantity", quantity), ("placement", placement),
                          ("layers", stack_layers)):  # fmt: skip
            blocks[column].append(constant(v))

    for quantity, per_stack in result.items():
        if quantity == "loss":
            emit("model", "loss", "loss", _per_seed(per_stack, n, "loss").reshape(n, 1), np.array([-1]), np.array([-1]))
            continue
        for stack, levels in per_stack.items():
            for site, arr in levels["stack"].items():
                arr = _per_seed(arr, n, f"{quantity}/{stack}/{site}")
                if arr.ndim != 1:
                    raise ValueError(f"{quantity}/{stack}/{site}: stack-level values must be one per seed, got shape {arr.shape}")
                emit(stack, quantity, site, arr.reshape(n, 1), np.array([-1]), np.array([-1]))
            for site, arr in levels["layers"].items():
                arr = _per_seed(arr, n, f"{quantity}/{stack}/{site}")
                if arr.ndim == 2:
                    n_layers = arr.shape[1]
                    emit(stack, quantity, site, arr, np.arange(n_layers), np.full(n_layers, -1))
                elif arr.ndim == 3 and quantity in PAIRWISE:
                    n_layers = arr.shape[1]
                    rows, cols = np.meshgrid(np.arange(n_layers), np.arange(n_layers), indexing="ij")
                    emit(stack, quantity, site, arr.reshape(n, -1), rows.reshape(-1), cols.reshape(-1))
                elif arr.ndim == 3:  # per layer and head (attention entropy)
                    kind = site[: -len("_entropy")] if site.endswith("_entropy") else site
                    for head in range(arr.shape[2]):
                        emit(stack, quantity, f"{kind}.head{head}", arr[:, :, head], np.arange(arr.shape[1]),
                             np.full(arr.shape[1], -1))
                else:
                    raise ValueError(f"{quantity}/{stack}/{site}: cannot tidy an array of shape {arr.shape}")
    if not blocks["value"]:
        return pd.DataFrame({c: pd.Series(dtype=DTYPES[c]) for c in COLUMNS})
    columns = {c: np.concatenate(parts) for c, parts in blocks.items()}
    rows = len(columns["value"])
    columns.update(run=np.full(rows, run, dtype=object), arch=np.full(rows, cfg.arch, dtype=object),
                   norm=np.full(rows, cfg.norm, dtype=object), d_model=np.full(rows, cfg.d_model, np.int64),
                   step=np.full(rows, step, np.int64))  # fmt: skip
    return pd.DataFrame({c: columns[c] for c in COLUMNS}).astype(DTYPES)
