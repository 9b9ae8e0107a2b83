"""The geometry probes (analysis.probe.geometry) against independent numpy restatements: angular
distance between layers, effective and stable rank (on matrices of known rank, fewer tokens than
features included, raw and centred, against numpy's SVD), massive activations; the probes' rows from
`lnscope probe --probes ...` against the same restatements on the model's own sites; and their
memory declarations (analysis.memory.ProbeMemory) in the size check."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from analysis.cli import main as lnscope
from analysis.execution import ExecutionPlan
from analysis.memory import ProbeMemory, probe_estimate
from analysis.probe import PROBES, ProbeConfig
from analysis.probe.api import batch_key
from analysis.probe.geometry import (
    MassiveOptions,
    RankOptions,
    effective_rank_of,
    singular_values,
    stable_rank_of,
    stack_angular_distance,
)
from analysis.probe.loss import model_inputs, random_batch
from analysis.probe.registry import probe_memory
from models import ModelConfig, build_model

GEOMETRY = ("angular_distance", "effective_rank", "stable_rank", "massive_activations")


# ------------------------------------------------------------------------------------------------
# numpy restatements (float64), written from the equations in docs/probes.md
# ------------------------------------------------------------------------------------------------
def np_angular_distance(h: np.ndarray) -> np.ndarray:
    """(L, ..., D) -> (L, L): arccos of the mean per-token cosine, over π (zero vector: cosine 0)."""
    h = np.asarray(h, np.float64).reshape(h.shape[0], -1, h.shape[-1])
    out = np.zeros((h.shape[0], h.shape[0]))
    for i in range(h.shape[0]):
        for j in range(h.shape[0]):
            num = np.sum(h[i] * h[j], axis=-1)
            den = np.linalg.norm(h[i], axis=-1) * np.linalg.norm(h[j], axis=-1)
            cos = np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)
            out[i, j] = np.arccos(np.clip(cos.mean(), -1, 1)) / np.pi
    return out


def np_ranks(x: np.ndarray, centred: bool) -> tuple[float, float]:
    """(effective rank, stable rank) of one (n, D) matrix from numpy's SVD."""
    x = np.asarray(x, np.float64)
    if centred:
        x = x - x.mean(axis=0, keepdims=True)
    s = np.linalg.svd(x, compute_uv=False)
    if s.max() == 0:
        return 0.0, 0.0
    p = s / s.sum()
    p = p[p > 0]
    erank = float(np.exp(-np.sum(p * np.log(p))))
    srank = float(np.linalg.norm(x, "fro") ** 2 / np.linalg.norm(x, 2) ** 2)
    return erank, srank


def known_rank(rng: np.random.Generator, n: int, d: int, rank: int, equal: bool = False) -> np.ndarray:
    """An (n, d) matrix of exactly `rank`; with `equal`, its nonzero singular values all equal 3."""
    u = np.linalg.qr(rng.standard_normal((n, rank)))[0]
    v = np.linalg.qr(rng.standard_normal((d, rank)))[0]
    s = np.full(rank, 3.0) if equal else np.exp(rng.standard_normal(rank))
    return (u * s) @ v.T


# ------------------------------------------------------------------------------------------------
# Angular distance
# ------------------------------------------------------------------------------------------------
def test_angular_distance_is_the_numpy_restatement() -> None:
    rng = np.random.default_rng(0)
    h = rng.standard_normal((5, 2, 8, 16))
    h[3] = h[2] + 1e-3 * rng.standard_normal((2, 8, 16))  # nearly the same layer: a small angle
    h[4] = -h[0]  # opposite at every token: distance 1
    h[1, 0, 0] = 0.0  # a zero vector: cosine 0 at that token
    got = np.asarray(stack_angular_distance(jnp.asarray(h, jnp.float32)))
    want = np_angular_distance(h)
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.allclose(got, got.T) and np.all(np.diag(got)[[0, 2, 3, 4]] == 0)
    assert np.diag(got)[1] == pytest.approx(np.arccos(15 / 16) / np.pi, abs=1e-6)  # its zero token: cosine 0
    assert got[0, 4] == pytest.approx(1.0, abs=1e-6)
    # the small angle keeps its relative accuracy (arccos of a rounded float32 cosine would not)
    assert 1e-4 < want[2, 3] < 1e-3 and got[2, 3] == pytest.approx(want[2, 3], rel=1e-3)


# ------------------------------------------------------------------------------------------------
# Effective and stable rank
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, d, rank",
    [(6, 16, 3), (6, 16, 6), (32, 8, 5), (12, 12, 1)],  # fewer tokens than features in the first two
)
@pytest.mark.parametrize("centred", [False, True])
def test_ranks_agree_with_numpys_svd_on_known_rank(n: int, d: int, rank: int, centred: bool) -> None:
    x = known_rank(np.random.default_rng(n * d + rank), n, d, rank) + 0.5  # a shared mean: centring matters
    s = singular_values(jnp.asarray(x, jnp.float32), centred)
    want_e, want_s = np_ranks(x, centred)
    assert float(effective_rank_of(s)) == pytest.approx(want_e, rel=2e-4)
    assert float(stable_rank_of(s)) == pytest.approx(want_s, rel=2e-4)
    assert float(stable_rank_of(s)) <= float(effective_rank_of(s)) + 1e-4 <= min(n, d, rank + 1) + 1e-3


@pytest.mark.parametrize("n, d, rank", [(6, 16, 4), (20, 8, 8), (10, 10, 1)])
def test_equal_singular_values_give_the_rank_exactly(n: int, d: int, rank: int) -> None:
    s = singular_values(jnp.asarray(known_rank(np.random.default_rng(rank), n, d, rank, equal=True), jnp.float32))
    assert float(effective_rank_of(s)) == pytest.approx(rank, rel=1e-4)
    assert float(stable_rank_of(s)) == pytest.approx(rank, rel=1e-4)


def test_centring_removes_the_shared_direction_and_a_zero_matrix_has_rank_zero() -> None:
    rng = np.random.default_rng(1)
    identical_tokens = np.tile(rng.standard_normal(16), (6, 1))  # rank collapse: every token alike
    raw, centred = (
        singular_values(jnp.asarray(identical_tokens, jnp.float32)),
        singular_values(jnp.asarray(identical_tokens, jnp.float32), centred=True),
    )
    assert float(effective_rank_of(raw)) == pytest.approx(1.0, abs=1e-3)
    assert float(stable_rank_of(raw)) == pytest.approx(1.0, abs=1e-5)
    assert float(jnp.max(centred)) < 1e-5  # only rounding is left
    zero = singular_values(jnp.zeros((6, 16)))
    assert float(effective_rank_of(zero)) == 0.0 and float(stable_rank_of(zero)) == 0.0


def test_bad_options_are_named_with_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="rank_tokens 'tokens'.*sequence, batch"):
        RankOptions(tokens="tokens")
    with pytest.raises(ValueError, match="rank_centring 'yes'.*both, raw, centred"):
        RankOptions(centring="yes")
    with pytest.raises(ValueError, match="massive_sites must be a tuple"):
        MassiveOptions(sites="resid_post")
    with pytest.raises(ValueError, match="rank_tokens"):
        ProbeConfig(probes=("effective_rank",), rank_tokens="all")


# ------------------------------------------------------------------------------------------------
# The probes end to end: `lnscope probe --probes ...` rows against numpy on the model's own sites
# ------------------------------------------------------------------------------------------------
CFG = ModelConfig(arch="decoder", placement="pre", layers=3, d_model=16, heads=2, d_ff=32, vocab=32, max_len=8)
BATCH, LENGTH = 2, 8


@pytest.fixture(scope="module")
def cli_rows(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("geometry") / "geometry.parquet"
    argv = ["probe", "--probes", ",".join(GEOMETRY), "--layers", "3", "--d-model", "16", "--heads", "2"]
    argv += ["--d-ff", "32", "--vocab", "32", "--max-len", "8", "--seeds", "1", "--batch-size", "2"]
    assert lnscope([*argv, "--seq-len", "8", "--out", str(out)]) == 0
    return pd.read_parquet(out)


@pytest.fixture(scope="module")
def sites() -> dict[str, np.ndarray]:
    """The decoder's (L, B, T, D) sites for seed 0's model and batch, as `lnscope probe` draws them."""
    batch = random_batch(CFG, batch_key(jax.random.key(0)), BATCH, LENGTH)
    out = build_model(CFG, 0).forward(*model_inputs(CFG, batch))
    return {k: np.asarray(v, np.float64) for k, v in out.sites["decoder"]["layers"].items()}


def _values(rows: pd.DataFrame, quantity: str, site: str) -> pd.DataFrame:
    mine = rows[(rows["quantity"] == quantity) & (rows["site"] == site) & (rows["stack"] == "decoder")]
    return mine.sort_values(["layer", "other_layer"])


def test_angular_distance_rows_are_every_pair_of_layers(cli_rows, sites) -> None:
    for site in ("resid_pre", "resid_post"):
        rows = _values(cli_rows, "angular_distance", site)
        want = np_angular_distance(sites[site])
        assert len(rows) == 9
        np.testing.assert_allclose(rows["value"], want[rows["layer"], rows["other_layer"]], atol=5e-6)


@pytest.mark.parametrize("quantity, index", [("effective_rank", 0), ("stable_rank", 1)])
def test_rank_rows_are_the_per_sequence_mean_raw_and_centred(cli_rows, sites, quantity, index) -> None:
    for site, centred in (("resid_post", False), ("resid_post/centred", True)):
        rows = _values(cli_rows, quantity, site)
        h = sites["resid_post"]  # (L, B, T, D): T = 8 tokens, fewer than D = 16 features
        want = [np.mean([np_ranks(h[layer, b], centred)[index] for b in range(BATCH)]) for layer in range(3)]
        np.testing.assert_allclose(rows["value"], want, rtol=1e-4)
        assert list(rows["layer"]) == [0, 1, 2] and (rows["other_layer"] == -1).all()


def test_massive_activation_rows(cli_rows, sites) -> None:
    a = np.abs(sites["resid_post"]).reshape(3, -1)
    ratio = _values(cli_rows, "massive_activations", "resid_post")["value"]
    top = _values(cli_rows, "max_abs_activation", "resid_post")["value"]
    np.testing.assert_allclose(top, a.max(axis=1), rtol=1e-5)
    np.testing.assert_allclose(ratio, a.max(axis=1) / np.median(a, axis=1), rtol=1e-5)


def test_batch_ranks_read_the_whole_batch_and_say_so() -> None:
    """rank_tokens="batch": one B·T × D matrix per layer, rows at `{site}/batch` (a cheap eval_shape
    of the layer summary would not check the numbers, so this runs the summary on planted sites)."""
    from analysis.probe.geometry import _rank_summary

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 16))
    x[1] = x[0]  # the second sequence repeats the first: the batch matrix has rank 8, not 16
    got = _rank_summary(stable_rank_of, RankOptions(tokens="batch", centring="raw"), {"resid_post": x}, 1e-5)
    assert set(got) == {"resid_post/batch"}
    assert float(got["resid_post/batch"]) == pytest.approx(np_ranks(x.reshape(16, 16), False)[1], rel=1e-4)


def test_massive_activations_find_a_planted_outlier() -> None:
    from analysis.probe.geometry import _massive_summary

    x = np.random.default_rng(4).standard_normal((2, 8, 16)).astype(np.float32)
    x[1, 3, 5] = 2000.0
    got = _massive_summary(MassiveOptions(), {"resid_post": jnp.asarray(x)}, 1e-5)
    assert float(got["max_abs_activation"]["resid_post"]) == 2000.0
    assert float(got["massive_activations"]["resid_post"]) == pytest.approx(2000.0 / np.median(np.abs(x)), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Memory declarations: the size check reads them, never probe names
# ------------------------------------------------------------------------------------------------
def test_memory_declarations_of_the_geometry_probes() -> None:
    assert PROBES["angular_distance"].memory == ProbeMemory(stream_stack=True, layer_pairs=2)
    for name in ("effective_rank", "stable_rank", "massive_activations"):  # reduced inside each layer
        assert PROBES[name].memory == ProbeMemory()
    cfg = ModelConfig(layers=100, d_model=16, heads=2, d_ff=32, vocab=32, max_len=32)
    plan = ExecutionPlan(streams=1)
    base = probe_estimate(cfg, 1, 8, 16, probes=probe_memory(("cka",)), plan=plan)
    both = probe_estimate(cfg, 1, 8, 16, probes=probe_memory(("cka", "angular_distance")), plan=plan)
    assert both.total - base.total == 2 * 100 * 100 * 4  # its two (L, L) matrices; the stream is shared
    with pytest.raises(ValueError, match=r"unknown probe\(s\) \['angle'\]; valid choices: .*angular_distance"):
        probe_memory(("angle",))
    with pytest.raises(TypeError, match="ProbeMemory declarations"):
        probe_estimate(cfg, 1, 8, 16, probes=("cka",), plan=plan)
