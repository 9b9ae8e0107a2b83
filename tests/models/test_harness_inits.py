"""The harness options faithful to the papers' code: init="fairseq" / "torch_default" and the two GELUs.

Each init is compared with its closed form restated here in numpy (bounds of the uniform, and the
sample standard deviation against b/sqrt(3)); the activations with their formulas in float64.

Sampling tolerance of a standard deviation: for n iid draws of std σ and kurtosis κ = E[w⁴]/σ⁴, the
sample variance has Var(s²) ≈ (κ − 1)σ⁴/n, so s has standard error σ·sqrt((κ − 1)/(4n)); a uniform
has κ = 9/5, i.e. se(s)/σ = sqrt(0.2/n). The tests allow 5 standard errors (a two-sided normal tail
of 6e-7; the draws are seeded, so a pass is reproducible, and a wrong formula by even 1% fails at the
sizes used). The largest |w| of n draws of U(±b) lies below b(1 − t) with probability (1 − t)^n, so
it must exceed b(1 − 20/n) (probability e^-20 of failing by chance).
"""

from __future__ import annotations

import math

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import ModelConfig
from models.layers import ACTIVATION_FUNCTIONS, init_weight
from models.placements import deepnorm_constants
from models.transformer import Transformer

N_SE = 5.0


def torch_bound(fan_in: int, fan_out: int) -> float:
    """nn.Linear.reset_parameters: kaiming_uniform_(a=sqrt(5)) -> U(±sqrt(6/((1 + 5)·fan_in)))."""
    return math.sqrt(6.0 / ((1.0 + 5.0) * fan_in))


def xavier_bound(fan_in: int, fan_out: int, gain: float) -> float:
    """nn.init.xavier_uniform_: U(±gain·sqrt(6/(fan_in + fan_out)))."""
    return gain * math.sqrt(6.0 / (fan_in + fan_out))


def fairseq_bound(role: str, fan_in: int, fan_out: int) -> float:
    """fairseq 0.12: MultiheadAttention.reset_parameters (q, k, v gain 2^-1/2; out_proj gain 1),
    TransformerEncoderLayer/DecoderLayer fc1, fc2 = nn.Linear."""
    if role in ("q", "k", "v"):
        return xavier_bound(fan_in, fan_out, 1.0 / math.sqrt(2.0))
    if role == "o":
        return xavier_bound(fan_in, fan_out, 1.0)
    return torch_bound(fan_in, fan_out)


def assert_uniform(w: np.ndarray, bound: float) -> None:
    """w's entries are U(±bound): inside the bounds, reaching them, and of std bound/sqrt(3)."""
    w = np.asarray(w, np.float64).ravel()
    n = w.size
    assert np.abs(w).max() <= bound * (1 + 1e-6)
    assert np.abs(w).max() >= bound * (1 - 20.0 / n)
    rel_se = math.sqrt(0.2 / n)
    assert abs(w.std() / (bound / math.sqrt(3.0)) - 1.0) <= N_SE * rel_se, (w.std(), bound / math.sqrt(3.0))


@pytest.mark.parametrize("init", ["fairseq", "torch_default"])
@pytest.mark.parametrize("role", ["q", "k", "v", "o", "w1", "w2"])
def test_large_weight_matches_closed_form(init: str, role: str) -> None:
    fan_in, fan_out = {"w1": (256, 1024), "w2": (1024, 256)}.get(role, (512, 512))
    w = init_weight(jax.random.key(3), fan_in, fan_out, ModelConfig(init=init), 1.0, role)
    bound = fairseq_bound(role, fan_in, fan_out) if init == "fairseq" else torch_bound(fan_in, fan_out)
    assert_uniform(np.asarray(w), bound)


def test_gain_multiplies_the_base_draw() -> None:
    """A placement's gain scales the bound (fairseq's q gain 2^-1/2 times the placement's)."""
    cfg = ModelConfig(init="fairseq")
    for role in ("q", "w1"):
        base = init_weight(jax.random.key(5), 512, 512, cfg, 1.0, role)
        scaled = init_weight(jax.random.key(5), 512, 512, cfg, 0.3, role)
        # U(±l) is drawn as -l + u·2l: linear in l up to float32 rounding of the bound's size
        base = np.asarray(base)
        np.testing.assert_allclose(np.asarray(scaled), 0.3 * base, rtol=0, atol=4e-7 * 0.3 * np.abs(base).max())


def test_existing_inits_ignore_the_role() -> None:
    """The role only matters to fairseq: the harness's default draws are unchanged bit for bit."""
    for init in ("xavier_uniform", "xavier_normal", "normal"):
        cfg = ModelConfig(init=init)
        plain = init_weight(jax.random.key(1), 64, 256, cfg, 0.7)
        for role in ("q", "o", "w1"):
            np.testing.assert_array_equal(np.asarray(init_weight(jax.random.key(1), 64, 256, cfg, 0.7, role)), plain)


def _layer_params(cfg: ModelConfig) -> dict[str, np.ndarray]:
    model = Transformer(cfg, nnx.Rngs(0))
    layers = nnx.to_pure_dict(nnx.state(model, nnx.Param))["stacks"]["decoder"]["layers"]
    out = {}
    for sub, roles in (("attn", "qkvo"), ("mlp", ("w1", "w2"))):
        for role in roles:
            out[role] = np.asarray(layers[sub][role]["weight"])
            if cfg.bias:
                out[f"{role}.bias"] = np.asarray(layers[sub][role]["bias"])
    return out


def test_model_wires_roles_and_biases_as_fairseq() -> None:
    """Through the model: each projection has its role's fairseq bound, DeepNorm's β composes with
    it, and the biases are nn.Linear's U(±1/sqrt(fan_in)) except W_O's zero."""
    d, d_ff, layers = 64, 256, 2
    cfg = ModelConfig(layers=layers, d_model=d, heads=4, d_ff=d_ff, vocab=16, max_len=8, init="fairseq", bias=True)
    params = _layer_params(cfg)
    fans = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "w1": (d, d_ff), "w2": (d_ff, d)}
    for role, (fan_in, fan_out) in fans.items():
        assert_uniform(params[role], fairseq_bound(role, fan_in, fan_out))
        if role == "o":
            assert not params["o.bias"].any()
        else:
            assert_uniform(params[f"{role}.bias"], torch_bound(fan_in, fan_out))
    beta = deepnorm_constants("decoder", "decoder", layers, layers)[1]
    deep = _layer_params(cfg.replace(placement="deepnorm", bias=False))
    for role, (fan_in, fan_out) in fans.items():
        gain = beta if role in ("v", "o", "w1", "w2") else 1.0  # DeepNorm's β on W_V, W_O, W1, W2
        assert_uniform(deep[role], gain * fairseq_bound(role, fan_in, fan_out))


def test_torch_default_model_and_zero_bias_inits_unchanged() -> None:
    d, d_ff = 64, 256
    cfg = ModelConfig(layers=2, d_model=d, heads=4, d_ff=d_ff, vocab=16, max_len=8, init="torch_default", bias=True)
    params = _layer_params(cfg)
    for role, fan_in in {"q": d, "o": d, "w1": d, "w2": d_ff}.items():
        assert_uniform(params[role], torch_bound(fan_in, 0))
        assert_uniform(params[f"{role}.bias"], torch_bound(fan_in, 0))
    xavier = _layer_params(cfg.replace(init="xavier_uniform"))
    assert not any(xavier[f"{r}.bias"].any() for r in ("q", "k", "v", "o", "w1", "w2"))


def _erf_gelu(x: np.ndarray) -> np.ndarray:
    """x·Φ(x), Φ(x) = (1 + erf(x/√2))/2, in float64."""
    return np.array([v * 0.5 * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.astype(np.float64)])


def _tanh_gelu(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def test_gelu_is_the_erf_form_and_gelu_tanh_the_approximation() -> None:
    x = np.linspace(-8.0, 8.0, 4001, dtype=np.float32)
    exact = np.asarray(ACTIVATION_FUNCTIONS["gelu"](jnp.asarray(x)), np.float64)
    approx = np.asarray(ACTIVATION_FUNCTIONS["gelu_tanh"](jnp.asarray(x)), np.float64)
    eps = np.finfo(np.float32).eps
    # float rounding: a few ulps of the result, plus the input's own rounding times |f'| <= 1.13
    tol = 4 * eps * (np.abs(_erf_gelu(x)) + np.abs(x))
    assert np.all(np.abs(exact - _erf_gelu(x)) <= tol + 1e-30)
    assert np.all(np.abs(approx - _tanh_gelu(x)) <= 4 * eps * (np.abs(_tanh_gelu(x)) + np.abs(x)) + 1e-30)
    # the two are different functions (they differ by up to ~5e-4 near |x| = 2)
    assert np.abs(exact - approx).max() > 1e-4


def test_activation_choice_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown activation 'gelu_exact'.*valid choices: relu, gelu, gelu_tanh"):
        ModelConfig(activation="gelu_exact")
    with pytest.raises(ValueError, match="unknown init 'torch'.*torch_default"):
        ModelConfig(init="torch")
