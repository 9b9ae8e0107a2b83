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
    blocks: list[dict[str, Any]] = []

    def emit(stack, quantity, site, values, layer, other):
        # values: (n_seeds, k) with matching layer/other arrays of length k
        k = values.shape[1]
        blocks.append(
            dict(
                seed=np.repeat(seeds, k),
                stack=stack,
                layer=np.tile(layer, n),
                site=site,
                quantity=quantity,
                value=values.reshape(-1).astype(np.float64),
                other_layer=np.tile(other, n),
            )
        )

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
    if not blocks:
        return pd.DataFrame({c: pd.Series(dtype=DTYPES[c]) for c in COLUMNS})
    frame = pd.concat([pd.DataFrame(b) for b in blocks], ignore_index=True)
    meta = frame["stack"].map(lambda s: _stack_meta(cfg, s))
    frame["placement"] = meta.map(lambda m: m[0])
    frame["layers"] = meta.map(lambda m: m[1]).astype(int)
    frame["run"], frame["arch"], frame["norm"] = run, cfg.arch, cfg.norm
    frame["d_model"], frame["step"] = cfg.d_model, step
    return frame[list(COLUMNS)].astype(DTYPES)
