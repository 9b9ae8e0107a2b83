"""Xu et al.'s backward measurement against an independent restatement (numpy, float64) and against
the known properties of each norm's backward pass, through the real models."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.experiments.experiment import HARNESSES
from analysis.experiments.xu2019 import BackwardJob, backward_stats

EPS = 1e-5


def _numpy_stats(x, g_in, g_out):
    """The four quantities restated in float64 numpy, dead tokens (zero upstream gradient) left out."""
    x, g_in, g_out = (np.asarray(a, np.float64) for a in (x, g_in, g_out))
    sigma = np.sqrt(x.var(-1, keepdims=True) + EPS)
    y = (x - x.mean(-1, keepdims=True)) / sigma
    cos = lambda a, b: np.abs((a * b).sum(-1)) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    live = (g_out != 0).any(-1)
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):  # dead tokens: 0/0, left out below
        stats = {
            "ln_grad_mean_cos": cos(g_in, np.ones_like(x)),
            "ln_grad_var_ratio": (sigma * g_in).var(-1) / np.where(live, g_out.var(-1), 1.0),
            "ln_grad_y_cos": cos(g_in, y),
            "ln_upstream_mean_cos": cos(g_out, np.ones_like(x)),
        }
    for name, per_token in stats.items():
        out[name] = np.array([per_token[l][live[l]].mean() for l in range(x.shape[0])])
    return out


def _layernorm_vjp(x, g):
    """∂ℒ/∂x of y = (x - μ)/σ (no gain) by its closed form: (g - mean(g) - y·mean(g·y)) / σ."""
    sigma = np.sqrt(x.var(-1, keepdims=True) + EPS)
    y = (x - x.mean(-1, keepdims=True)) / sigma
    return (g - g.mean(-1, keepdims=True) - y * (g * y).mean(-1, keepdims=True)) / sigma


@pytest.mark.parametrize("backward", ["layernorm", "detached"])
def test_backward_stats_match_a_numpy_restatement(backward: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, (2, 2, 3, 8))
    g_out = rng.normal(0.3, 1.0, x.shape)
    g_out[:, :, -1] = 0.0  # the last position of a causal LM: no gradient, left out
    sigma = np.sqrt(x.var(-1, keepdims=True) + EPS)
    g_in = _layernorm_vjp(x, g_out) if backward == "layernorm" else g_out / sigma  # DetachNorm: μ, σ constants
    got = {
        k: np.asarray(v)
        for k, v in backward_stats(x.astype(np.float32), g_in.astype(np.float32), g_out.astype(np.float32), EPS).items()
    }
    want = _numpy_stats(x, g_in, g_out)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-4, atol=2e-6, err_msg=name)
    if backward == "layernorm":  # re-centred and orthogonal to y; variance shrunk
        assert got["ln_grad_mean_cos"].max() < 1e-5 and got["ln_grad_y_cos"].max() < 1e-5
        assert (got["ln_grad_var_ratio"] < 1).all()
    else:  # σ·∂ℒ/∂x is the upstream gradient itself
        np.testing.assert_allclose(got["ln_grad_var_ratio"], 1.0, rtol=1e-5)
        np.testing.assert_allclose(got["ln_grad_mean_cos"], got["ln_upstream_mean_cos"], rtol=1e-5)


def test_real_models_show_each_norms_backward_property() -> None:
    """Through the model's own norms: LayerNorm re-centres (mean cos ~ 0) and removes the y component;
    DetachNorm passes the upstream gradient through scaled by 1/σ (variance ratio 1)."""
    tiny = HARNESSES["tiny"]
    values = {}
    for norm in ("layernorm", "detachnorm"):
        job = BackwardJob(norm, tiny.model("decoder", "pre", 2, norm=norm), 2, tiny.batch_size, tiny.seq_len)
        frame = job.compute()
        values[norm] = {
            q: frame[(frame["quantity"] == q) & (frame["layer"] >= 0)]["value"].to_numpy()
            for q in ("ln_grad_mean_cos", "ln_grad_y_cos", "ln_grad_var_ratio")
        }
        assert all(v.size >= 4 for v in values[norm].values()), (norm, {q: v.size for q, v in values[norm].items()})
    assert values["layernorm"]["ln_grad_mean_cos"].max() < 1e-4
    assert values["layernorm"]["ln_grad_y_cos"].max() < 1e-4
    np.testing.assert_allclose(values["detachnorm"]["ln_grad_var_ratio"], 1.0, rtol=1e-4)
    assert values["detachnorm"]["ln_grad_mean_cos"].min() > 1e-3  # not re-centred
