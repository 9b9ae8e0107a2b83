"""analysis.probe.tidy.to_frame: the column contract of the result tables (documented in analysis/tidy.py).

Two sources: a synthetic result (every layout the probe program produces, with known values, NaN and
Inf, non-contiguous seeds) checked value by value, and one real probe_at_init frame of a small
encoder-decoder whose stacks differ in depth and placement, checked against the contract.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.probe.api import probe_at_init
from analysis.probe.probes import CHEAP_PROBES
from analysis.probe.tidy import COLUMNS, pairwise_quantities, to_frame
from models import ModelConfig

PAIRWISE = pairwise_quantities()  # the quantities whose probes declare pairwise rows (cka's, angular_distance)

INT_COLUMNS = ("layers", "d_model", "seed", "step", "layer", "other_layer")
STR_COLUMNS = ("run", "arch", "placement", "norm", "stack", "site", "quantity")
KEY = ["seed", "stack", "layer", "site", "quantity", "other_layer"]

# Encoder 3 layers (Post-LN), decoder 2 layers (Pre-LN): every per-stack column is distinguishable.
N_ENC, N_DEC, HEADS = 3, 2, 2
CFG = ModelConfig(
    arch="encdec",
    placement="pre",
    enc_placement="post",
    enc_layers=N_ENC,
    dec_layers=N_DEC,
    d_model=16,
    heads=HEADS,
    d_ff=32,
    vocab=32,
)
SEEDS = [5, 9]  # non-contiguous: seed labels must follow the leading axis, not be its index


def _synthetic(n: int = len(SEEDS)) -> dict:
    """A result with the probe program's layout (leading seed axis) and known values."""
    rng = np.random.default_rng(0)
    r = lambda *shape: rng.random((n, *shape))
    agn_dec = r(N_DEC)
    agn_dec[1, 0] = np.nan  # a diverged value is a result, not a row to drop
    return {
        "loss": r(),
        "act_grad_norm": {
            "encoder": {"layers": {"resid_pre": r(N_ENC)}, "stack": {"embed": r()}},
            "decoder": {"layers": {"resid_pre": agn_dec, "resid_mid_cross": r(N_DEC)}, "stack": {"stack_out": r()}},
        },
        "param_grad_norm": {
            "decoder": {"layers": {"mlp.w2.weight": r(N_DEC)}, "stack": {"final_norm": np.full(n, np.inf)}},
            "model": {"layers": {}, "stack": {"embed": r(), "head": r()}},
        },
        "cka": {"encoder": {"layers": {"resid_post": r(N_ENC, N_ENC)}, "stack": {}}},
        "attn_entropy": {
            "decoder": {"layers": {"attn_entropy": r(N_DEC, HEADS), "cross_entropy": r(N_DEC, HEADS)}, "stack": {}}
        },
    }


def _value(df: pd.DataFrame, **key) -> float:
    rows = df
    for k, v in key.items():
        rows = rows[rows[k] == v]
    assert len(rows) == 1, (key, rows)
    return float(rows["value"].iloc[0])


def _check_contract(df: pd.DataFrame) -> None:
    """What every to_frame output promises."""
    assert list(df.columns) == list(COLUMNS)
    for c in INT_COLUMNS:
        assert pd.api.types.is_integer_dtype(df[c]), f"{c}: {df[c].dtype}"
    assert df["value"].dtype == np.float64
    for c in STR_COLUMNS:
        assert pd.api.types.is_string_dtype(df[c]) or df[c].dtype == object, f"{c}: {df[c].dtype}"
        assert df[c].map(lambda v: isinstance(v, str)).all(), c
    dup = df.duplicated(KEY, keep=False)
    assert not dup.any(), df[dup].sort_values(KEY).head(10)
    assert set(df["stack"]) <= {"encoder", "decoder", "model"}
    assert (df["layer"] >= -1).all() and (df["layer"] < df["layers"]).all()
    assert (df["other_layer"] >= -1).all() and (df["other_layer"] < df["layers"]).all()
    pairwise = df["quantity"].isin(PAIRWISE)
    assert (df.loc[~pairwise, "other_layer"] == -1).all()
    assert (df.loc[pairwise, "other_layer"] >= 0).all() and (df.loc[pairwise, "layer"] >= 0).all()
    assert (df.loc[df["stack"] == "model", "layer"] == -1).all()
    assert df["run"].nunique() == 1 and df["step"].nunique() == 1


# ------------------------------------------------------------------------------------------------
# Synthetic result: exact placement of every value
# ------------------------------------------------------------------------------------------------
def test_synthetic_result_rows_and_values() -> None:
    result = _synthetic()
    df = to_frame(result, CFG, SEEDS, run="unit", step=7)
    _check_contract(df)
    n = len(SEEDS)
    expected_rows = n * (1 + (N_ENC + 1) + (2 * N_DEC + 1) + (N_DEC + 1 + 2) + N_ENC * N_ENC + 2 * N_DEC * HEADS)
    assert len(df) == expected_rows
    assert sorted(df["seed"].unique()) == SEEDS
    assert (df["run"] == "unit").all() and (df["step"] == 7).all() and (df["arch"] == "encdec").all()
    assert (df["norm"] == "layernorm").all() and (df["d_model"] == 16).all()

    for i, seed in enumerate(SEEDS):
        assert _value(df, seed=seed, quantity="loss", stack="model", site="loss", layer=-1) == result["loss"][i]
        for layer in range(N_ENC):
            got = _value(df, seed=seed, quantity="act_grad_norm", stack="encoder", site="resid_pre", layer=layer)
            assert got == result["act_grad_norm"]["encoder"]["layers"]["resid_pre"][i, layer]
            for other in range(N_ENC):
                got = _value(df, seed=seed, quantity="cka", stack="encoder", layer=layer, other_layer=other)
                assert got == result["cka"]["encoder"]["layers"]["resid_post"][i, layer, other]
        assert (
            _value(df, seed=seed, quantity="act_grad_norm", stack="encoder", site="embed")
            == (result["act_grad_norm"]["encoder"]["stack"]["embed"][i])
        )
        for kind in ("attn", "cross"):
            for layer in range(N_DEC):
                for head in range(HEADS):
                    got = _value(df, seed=seed, quantity="attn_entropy", site=f"{kind}.head{head}", layer=layer)
                    assert got == result["attn_entropy"]["decoder"]["layers"][f"{kind}_entropy"][i, layer, head]
        for site in ("embed", "head"):
            got = _value(df, seed=seed, quantity="param_grad_norm", stack="model", site=site)
            assert got == result["param_grad_norm"]["model"]["stack"][site][i]


def test_stack_level_rows_have_layer_minus_one() -> None:
    df = to_frame(_synthetic(), CFG, SEEDS)
    stack_sites = {
        ("act_grad_norm", "encoder", "embed"),
        ("act_grad_norm", "decoder", "stack_out"),
        ("param_grad_norm", "decoder", "final_norm"),
        ("param_grad_norm", "model", "embed"),
        ("param_grad_norm", "model", "head"),
        ("loss", "model", "loss"),
    }
    is_stack = df.apply(lambda r: (r["quantity"], r["stack"], r["site"]) in stack_sites, axis=1)
    assert (df.loc[is_stack, "layer"] == -1).all() and (df.loc[is_stack, "other_layer"] == -1).all()
    assert (df.loc[~is_stack, "layer"] >= 0).all()
    assert is_stack.sum() == len(stack_sites) * len(SEEDS)


def test_nan_and_inf_are_kept() -> None:
    df = to_frame(_synthetic(), CFG, SEEDS)
    nan = df[df["value"].isna()]
    assert len(nan) == 1
    row = nan.iloc[0]
    assert (row["seed"], row["stack"], row["site"], row["layer"]) == (SEEDS[1], "decoder", "resid_pre", 0)
    inf = df[np.isinf(df["value"])]
    assert len(inf) == len(SEEDS) and set(inf["site"]) == {"final_norm"}


def test_placement_and_layers_columns_follow_the_stack() -> None:
    """The encoder's rows carry enc_placement and its own depth; model rows the decoder placement."""
    df = to_frame(_synthetic(), CFG, SEEDS)
    meta = df.groupby("stack")[["placement", "layers"]].agg(lambda s: sorted(set(s)))
    assert meta.loc["encoder", "placement"] == ["post"] and meta.loc["encoder", "layers"] == [N_ENC]
    assert meta.loc["decoder", "placement"] == ["pre"] and meta.loc["decoder", "layers"] == [N_DEC]
    assert meta.loc["model", "placement"] == ["pre"] and meta.loc["model", "layers"] == [max(N_ENC, N_DEC)]
    # without enc_placement, the encoder rows carry the one placement
    same = to_frame(_synthetic(), CFG.replace(enc_placement=None), SEEDS)
    assert set(same["placement"]) == {"pre"}


def test_bad_shapes_are_rejected_and_empty_results_keep_the_columns() -> None:
    result = _synthetic()
    # 2 seeds of data labelled with 3 seeds: the first hit is the scalar loss, named as such
    with pytest.raises(ValueError, match=r"loss: leading \(seed\) axis of shape \(2,\) does not match 3 seed"):
        to_frame(result, CFG, SEEDS + [11])
    with pytest.raises(ValueError, match=r"act_norm/decoder/resid_pre: .*shape \(2, \d+\) does not match 3 seed"):
        to_frame(
            {"act_norm": {"decoder": {"layers": {"resid_pre": np.zeros((2, N_DEC))}, "stack": {}}}}, CFG, SEEDS + [11]
        )
    with pytest.raises(ValueError, match=r"act_norm/decoder/stack_out: .*one per seed"):
        to_frame({"act_norm": {"decoder": {"layers": {}, "stack": {"stack_out": np.zeros((2, 4))}}}}, CFG, SEEDS)
    bad = {"act_norm": {"decoder": {"layers": {"resid_pre": np.zeros((2, 2, 2, 2))}, "stack": {}}}}
    with pytest.raises(ValueError, match="cannot tidy"):
        to_frame(bad, CFG, SEEDS)
    # a probe's declared host half checks its own layout: cka's rows are pairs of layers
    assert PAIRWISE == {"cka", "cka_null", "angular_distance"}
    not_square = {"cka": {"decoder": {"layers": {"resid_post": np.zeros((2, N_DEC, N_DEC + 1))}, "stack": {}}}}
    with pytest.raises(ValueError, match=r"cka/decoder/resid_post: cannot tidy .* pairwise"):
        to_frame(not_square, CFG, SEEDS)
    empty = to_frame({"act_norm": {"decoder": {"layers": {}, "stack": {}}}}, CFG, SEEDS)
    full = to_frame(result, CFG, SEEDS)
    # an empty result keeps the columns and their dtypes, so it concatenates with real frames cleanly
    assert list(empty.columns) == list(COLUMNS) and empty.empty
    assert empty.dtypes.equals(full.dtypes), (empty.dtypes, full.dtypes)
    assert pd.concat([empty, full]).dtypes.equals(full.dtypes)


# ------------------------------------------------------------------------------------------------
# A real probe result
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real() -> pd.DataFrame:
    return probe_at_init(CFG, seeds=SEEDS, batch_size=2, seq_len=6, probes=(*CHEAP_PROBES, "output_change"), run="real")


def test_real_frame_contract(real: pd.DataFrame) -> None:
    _check_contract(real)
    assert sorted(real["seed"].unique()) == SEEDS
    assert (real["run"] == "real").all() and (real["step"] == 0).all()
    assert set(real["stack"]) == {"encoder", "decoder", "model"}
    # same rows for every seed
    per_seed = [g.drop(columns=["seed", "value"]).reset_index(drop=True) for _, g in real.groupby("seed")]
    pd.testing.assert_frame_equal(per_seed[0], per_seed[1])
    # every per-layer quantity covers exactly the stack's layers
    layered = real[(real["layer"] >= 0) & ~real["quantity"].isin(PAIRWISE)]
    for (stack, site, quantity), g in layered.groupby(["stack", "site", "quantity"]):
        depth = {"encoder": N_ENC, "decoder": N_DEC}[stack]
        expected = range(depth - 1) if quantity == "cos_adjacent" else range(depth)
        assert sorted(g["layer"].unique()) == list(expected), (stack, site, quantity)


def test_real_frame_layout(real: pd.DataFrame) -> None:
    meta = real.groupby("stack")[["placement", "layers"]].agg(lambda s: sorted(set(s)))
    assert meta.loc["encoder"].tolist() == [["post"], [N_ENC]]
    assert meta.loc["decoder"].tolist() == [["pre"], [N_DEC]]
    # cka / cka_null (the pairwise quantities of the cheap probes): every (layer, other_layer) pair
    assert PAIRWISE & set(real["quantity"]) == {"cka", "cka_null"}
    for quantity in ("cka", "cka_null"):
        for stack, depth in (("encoder", N_ENC), ("decoder", N_DEC)):
            rows = real[(real["quantity"] == quantity) & (real["stack"] == stack) & (real["seed"] == SEEDS[0])]
            pairs = set(zip(rows["layer"], rows["other_layer"]))
            assert pairs == {(i, j) for i in range(depth) for j in range(depth)}, (quantity, stack)
    # attention entropy: one site per sublayer kind and head
    ent = real[real["quantity"] == "attn_entropy"]
    assert set(ent[ent["stack"] == "encoder"]["site"]) == {f"attn.head{h}" for h in range(HEADS)}
    assert set(ent[ent["stack"] == "decoder"]["site"]) == {
        f"{k}.head{h}" for k in ("attn", "cross") for h in range(HEADS)
    }
    # stack-level rows (layer -1): the stack ends, the decoder's final norm, the model-level parameters
    top = real[real["layer"] == -1]
    assert {"embed", "stack_out"} <= set(top[(top["stack"] == "encoder") & (top["quantity"] == "act_norm")]["site"])
    assert {"final"} <= set(top[(top["stack"] == "decoder") & (top["quantity"] == "ln_jacobian_gain")]["site"])
    assert set(top[top["stack"] == "model"]["site"]) == {"loss", "embed", "head"}
    oc = real[real["quantity"] == "output_change"]
    assert set(zip(oc["stack"], oc["site"], oc["layer"])) == {("decoder", "stack_out", -1)}
    assert real["value"].notna().all()
