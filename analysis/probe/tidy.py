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

Each registered probe declares, per quantity, its host half: how a per-layer array becomes rows
(analysis.probe.registry.Probe.quantities): `layer_rows` (one row per layer, the default),
`pairwise_rows` (one per (layer, other_layer)) or `head_rows` (one site per attention head).
Stack-level values are one row each. The jitted half of a probe never sees rows; this module never
computes a probe.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from analysis.probe.registry import PROBES, RowFn
from models import ModelConfig

COLUMNS = (
    "run",
    "arch",
    "placement",
    "norm",
    "layers",
    "d_model",
    "seed",
    "step",
    "stack",
    "layer",
    "site",
    "quantity",
    "value",
    "other_layer",
)
DTYPES = {
    "run": object,
    "arch": object,
    "placement": object,
    "norm": object,
    "layers": np.int64,
    "d_model": np.int64,
    "seed": np.int64,
    "step": np.int64,
    "stack": object,
    "layer": np.int64,
    "site": object,
    "quantity": object,
    "value": np.float64,
    "other_layer": np.int64,
}


def layer_rows(site: str, arr: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """One row per layer of an (n_seeds, L) array. An (n_seeds, L, H) array of a quantity no probe
    declares is read as per head (`head_rows`)."""
    if arr.ndim == 3:
        return head_rows(site, arr)
    if arr.ndim != 2:
        raise ValueError(f"cannot tidy an array of shape {arr.shape} as one value per layer")
    n_layers = arr.shape[1]
    return [(site, arr, np.arange(n_layers), np.full(n_layers, -1))]


def pairwise_rows(site: str, arr: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """One row per (layer, other_layer) of an (n_seeds, L, L) array of pairwise values."""
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"cannot tidy an array of shape {arr.shape} as pairwise (n_seeds, L, L) values")
    n, n_layers = arr.shape[0], arr.shape[1]
    rows, cols = np.meshgrid(np.arange(n_layers), np.arange(n_layers), indexing="ij")
    return [(site, arr.reshape(n, -1), rows.reshape(-1), cols.reshape(-1))]


def head_rows(site: str, arr: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """One site per head, `{kind}.head{h}`, of an (n_seeds, L, H) array at site `{kind}_entropy`."""
    if arr.ndim != 3:
        raise ValueError(f"cannot tidy an array of shape {arr.shape} as (n_seeds, L, heads) values")
    kind = site[: -len("_entropy")] if site.endswith("_entropy") else site
    n_layers = arr.shape[1]
    return [(f"{kind}.head{h}", arr[:, :, h], np.arange(n_layers), np.full(n_layers, -1)) for h in range(arr.shape[2])]


def pairwise_quantities() -> frozenset[str]:
    """Quantities whose rows are pairs of layers (other_layer >= 0), from the probe registry."""
    return frozenset(q for q, fn in _row_fns().items() if fn is pairwise_rows)


def _row_fns() -> dict[str, RowFn | None]:
    """{quantity: its host half} of every registered probe (read per call: probes register later)."""
    return {q: fn for probe in PROBES.values() for q, fn in probe.quantities.items()}


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
    return cfg.placement, max(
        cfg.n_enc_layers if cfg.arch != "decoder" else 0, cfg.n_dec_layers if cfg.arch != "encoder" else 0
    )


def to_frame(result: dict, cfg: ModelConfig, seeds: Iterable[int], *, run: str = "", step: int = 0) -> pd.DataFrame:
    """Tidy rows from a probe result whose arrays carry a leading seed axis (len(seeds))."""
    seeds = [int(s) for s in seeds]
    n = len(seeds)
    # columns built as numpy blocks, one per (quantity, stack, site), joined once: no per-row Python
    # (a 1000-layer study has 2·10⁶ rows, a 32-seed study ~10⁵)
    blocks: dict[str, list[np.ndarray]] = {
        c: [] for c in ("seed", "stack", "layer", "site", "quantity", "value", "other_layer", "placement", "layers")
    }

    def emit(stack, quantity, site, values, layer, other):
        # values: (n_seeds, k) with matching layer/other arrays of length k
        k = values.shape[1]
        placement, stack_layers = _stack_meta(cfg, stack)
        constant = lambda v: np.full(n * k, v, dtype=object if isinstance(v, str) else np.int64)
        blocks["seed"].append(np.repeat(np.asarray(seeds, np.int64), k))
        blocks["layer"].append(np.tile(np.asarray(layer, np.int64), n))
        blocks["other_layer"].append(np.tile(np.asarray(other, np.int64), n))
        blocks["value"].append(values.reshape(-1).astype(np.float64))
        for column, v in (
            ("stack", stack),
            ("site", site),
            ("quantity", quantity),
            ("placement", placement),
            ("layers", stack_layers),
        ):
            blocks[column].append(constant(v))

    row_fns = _row_fns()
    for quantity, per_stack in result.items():
        if quantity == "loss":
            emit("model", "loss", "loss", _per_seed(per_stack, n, "loss").reshape(n, 1), np.array([-1]), np.array([-1]))
            continue
        for stack, levels in per_stack.items():
            for site, arr in levels["stack"].items():
                arr = _per_seed(arr, n, f"{quantity}/{stack}/{site}")
                if arr.ndim != 1:
                    raise ValueError(
                        f"{quantity}/{stack}/{site}: stack-level values must be one per seed, got shape {arr.shape}"
                    )
                emit(stack, quantity, site, arr.reshape(n, 1), np.array([-1]), np.array([-1]))
            rows_of = row_fns.get(quantity) or layer_rows
            for site, arr in levels["layers"].items():
                arr = _per_seed(arr, n, f"{quantity}/{stack}/{site}")
                try:
                    rows = rows_of(site, arr)
                except ValueError as err:
                    raise ValueError(f"{quantity}/{stack}/{site}: {err}") from None
                for row_site, values, layer, other in rows:
                    emit(stack, quantity, row_site, values, layer, other)
    if not blocks["value"]:
        return pd.DataFrame({c: pd.Series(dtype=DTYPES[c]) for c in COLUMNS})
    columns = {c: np.concatenate(parts) for c, parts in blocks.items()}
    rows = len(columns["value"])
    columns.update(
        run=np.full(rows, run, dtype=object),
        arch=np.full(rows, cfg.arch, dtype=object),
        norm=np.full(rows, cfg.norm, dtype=object),
        d_model=np.full(rows, cfg.d_model, np.int64),
        step=np.full(rows, step, np.int64),
    )
    return pd.DataFrame({c: columns[c] for c in COLUMNS}).astype(DTYPES)
