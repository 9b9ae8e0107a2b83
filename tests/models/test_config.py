"""Input validation: a bad ModelConfig or bad token input is a ValueError naming the bad value and
what would have been valid, raised before any compute; plus `replace` and `stacks()`.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from models import ARCHS, NORMS, PLACEMENTS, ModelConfig, StackSpec, validate_tokens
from models.config import ACTIVATIONS, ADMIN_INITS, DTYPES, INITS, POSITIONS, field_choices

TINY = dict(d_model=8, heads=2, d_ff=16, vocab=16, layers=2, max_len=6)


def raises_naming(*fragments: object):
    """pytest.raises(ValueError) whose message contains every fragment (regex-escaped)."""
    return pytest.raises(ValueError, match="(?s)" + "".join(f"(?=.*{re.escape(str(f))})" for f in fragments))


# -- unknown names: message has the bad value (repr) and at least one valid choice -------------
CHOICES = [
    ("placement", "postln", list(PLACEMENTS)),
    ("norm", "batchnorm", list(NORMS)),
    ("arch", "gpt", list(ARCHS)),
    ("activation", "swish", list(ACTIVATIONS)),
    ("init", "kaiming", list(INITS)),
    ("pos", "rope", list(POSITIONS)),
    ("dtype", "float16", list(DTYPES)),
    ("admin_init", "adaptive", list(ADMIN_INITS)),
    ("placement", "Pre", list(PLACEMENTS)),  # case matters
    ("norm", "", list(NORMS)),
]


@pytest.mark.parametrize("field, bad, valid", CHOICES, ids=[f"{f}={b!r}" for f, b, _ in CHOICES])
def test_unknown_choice(field, bad, valid):
    with raises_naming(field, repr(bad), valid[0], valid[-1]):
        ModelConfig(**{field: bad})


def test_unknown_enc_placement_on_encdec():
    with raises_naming("enc_placement", "'postln'", "pre"):
        ModelConfig(arch="encdec", enc_placement="postln")


@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_enc_placement_needs_encdec(arch):
    with raises_naming("enc_placement", repr(arch), "encdec"):
        ModelConfig(arch=arch, enc_placement="post")


def test_heads_must_divide_d_model():
    # The message names both numbers and the valid head counts for this width.
    with raises_naming("d_model=64", "heads=5", "[1, 2, 4, 8, 16, 32, 64]"):
        ModelConfig(d_model=64, heads=5)


COUNTS = ["layers", "enc_layers", "dec_layers", "d_model", "heads", "d_ff", "vocab", "max_len", "rsln_steps"]
BAD_COUNTS = [
    (field, bad)
    for field in COUNTS
    for bad in (0, -1, 2.5, True, "3", None)
    if not (bad is None and field in ("enc_layers", "dec_layers"))  # None = "use layers" there
]


@pytest.mark.parametrize("field, bad", BAD_COUNTS, ids=[f"{f}={b!r}" for f, b in BAD_COUNTS])
def test_positive_integers(field, bad):
    # 2.5 and True would otherwise slip through (True == 1; range(2.5) fails late, inside the model).
    with raises_naming(field, repr(bad), ">= 1"):
        ModelConfig(**{field: bad})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), -1, -1e-9])
def test_skip_lambda_finite_non_negative(bad):
    with raises_naming("skip_lambda", repr(bad)):
        ModelConfig(placement="skip_scale", skip_lambda=bad)


@pytest.mark.parametrize("bad", [1, 1.0, 1.5, -0.1, float("nan")])
def test_dropout_in_unit_interval(bad):
    with raises_naming("dropout", repr(bad)):
        ModelConfig(dropout=bad)


NUMERIC = [
    ("residual_scale", 0.0),  # strictly positive
    ("norm_eps", -1e-5),
    ("norm_eps", float("nan")),
    ("mix_post_fraction", 1.5),
    ("mix_post_fraction", -0.1),
    ("adanorm_scale", 0.0),
    ("adanorm_k", -0.1),
    ("dyt_alpha0", float("inf")),
    ("embed_std", 0.0),
    ("embed_scale", -1.0),
    ("skip_lambda", True),  # a bool is not a number here
]


@pytest.mark.parametrize("field, bad", NUMERIC, ids=[f"{f}={b!r}" for f, b in NUMERIC])
def test_other_numeric_fields(field, bad):
    with raises_naming(field, repr(bad)):
        ModelConfig(**{field: bad})


def test_float64_needs_x64():
    with jax.enable_x64(False), raises_naming("float64", "jax_enable_x64", "JAX_ENABLE_X64=1"):
        ModelConfig(dtype="float64")
    with jax.enable_x64(True):
        assert ModelConfig(dtype="float64").dtype == "float64"


def test_build_model_rejects_non_config():
    with pytest.raises(TypeError, match="ModelConfig"):
        models.build_model({"arch": "decoder"})


# -- replace ---------------------------------------------------------------------------------
def test_replace_revalidates():
    cfg = ModelConfig(**TINY)
    with raises_naming("placement", "'bogus'"):
        cfg.replace(placement="bogus")
    with raises_naming("layers", "0"):
        cfg.replace(layers=0)
    with raises_naming("d_model=8", "heads=3"):
        cfg.replace(heads=3)
    with raises_naming("enc_placement"):
        cfg.replace(enc_placement="post")  # cfg is a decoder


def test_replace_copies_and_keeps_other_fields():
    cfg = ModelConfig(**TINY, placement="b2t")
    new = cfg.replace(layers=5, norm="rmsnorm")
    assert (new.layers, new.norm, new.placement, new.d_model) == (5, "rmsnorm", "b2t", 8)
    assert cfg.layers == 2 and cfg.norm == "layernorm"  # frozen original untouched
    with pytest.raises(AttributeError):
        cfg.layers = 3  # frozen dataclass


def abstract_model(cfg: ModelConfig) -> models.Transformer:
    """The model with shape-only parameters: enough for structure and for validation, which must
    raise before any array is touched."""
    return nnx.eval_shape(lambda: models.Transformer(cfg, nnx.Rngs(0)))


# -- stacks() --------------------------------------------------------------------------------
def test_stacks_decoder():
    (spec,) = ModelConfig(arch="decoder", layers=3, placement="b2t").stacks()
    assert spec == StackSpec("decoder", "b2t", 3, causal=True, cross=False, arch="decoder", enc_layers=3, dec_layers=3)
    assert spec.sublayers == ("attn", "mlp")


def test_stacks_encoder():
    (spec,) = ModelConfig(arch="encoder", layers=4, enc_layers=2).stacks()
    assert (spec.name, spec.layers, spec.causal, spec.cross) == ("encoder", 2, False, False)
    assert spec.sublayers == ("attn", "mlp")


def test_stacks_encdec_overrides_and_enc_placement():
    cfg = ModelConfig(arch="encdec", layers=6, enc_layers=2, dec_layers=5, placement="pre", enc_placement="post")
    enc, dec = cfg.stacks()  # bottom (input side) first
    assert (enc.name, enc.placement, enc.layers, enc.causal, enc.cross) == ("encoder", "post", 2, False, False)
    assert (dec.name, dec.placement, dec.layers, dec.causal, dec.cross) == ("decoder", "pre", 5, True, True)
    assert dec.sublayers == ("attn", "cross", "mlp")
    # Both stacks know both depths (DeepNorm's encdec constants need N and M).
    assert {(s.enc_layers, s.dec_layers, s.arch) for s in (enc, dec)} == {(2, 5, "encdec")}
    assert (cfg.n_enc_layers, cfg.n_dec_layers) == (2, 5)


def test_stacks_encdec_defaults():
    enc, dec = ModelConfig(arch="encdec", layers=3, placement="b2t").stacks()
    assert (enc.layers, dec.layers, enc.placement, dec.placement) == (3, 3, "b2t", "b2t")


def test_model_stacks_follow_config():
    cfg = ModelConfig(arch="encdec", enc_layers=1, dec_layers=3, **{**TINY, "layers": 2})
    model = abstract_model(cfg)
    assert set(model.stacks) == {"encoder", "decoder"}
    leading = {
        name: {a.shape[0] for a in jax.tree.leaves(nnx.state(model.stacks[name].layers))} for name in model.stacks
    }
    assert leading == {"encoder": {1}, "decoder": {3}}


# -- token validation --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoder_model():
    return abstract_model(ModelConfig(arch="decoder", **TINY))


@pytest.fixture(scope="module")
def encdec_model():
    return abstract_model(ModelConfig(arch="encdec", **TINY))


@pytest.fixture
def no_compute(monkeypatch):
    """Make the embedding (the first computation of a forward) fail loudly: validation must come first."""

    def boom(self, tokens):
        raise AssertionError("the forward started computing before validating its tokens")

    monkeypatch.setattr(models.layers.Embedding, "__call__", boom)


def ok(shape=(2, 4), high=16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, high, shape).astype(np.int32)


def _with(value: int, at=(1, 2)) -> np.ndarray:
    tokens = ok()
    tokens[at] = value
    return tokens


@pytest.mark.parametrize(
    "inputs, fragments",
    [
        ((_with(16),), ["token id 16", "0..15", "vocab=16"]),
        ((_with(1000),), ["token id 1000", "0..15"]),
        ((_with(-1),), ["token id -1", "0..15"]),
        ((ok((2, 7)),), ["length 7", "max_len=6"]),
        ((ok(), ok()), ["arch='decoder'", "1 token array", "got 2"]),
        ((), ["arch='decoder'", "got 0"]),
        ((ok().astype(np.float32),), ["integer", "float32"]),
        ((ok().astype(bool),), ["integer", "bool"]),
        ((ok((8,)),), ["(batch, length)", "(8,)"]),
        ((ok((2, 2, 2)),), ["(batch, length)", "(2, 2, 2)"]),
    ],
    ids=["id=vocab", "id=1000", "id=-1", "too-long", "two-inputs", "no-input", "float", "bool", "1d", "3d"],
)
def test_bad_decoder_tokens(decoder_model, no_compute, inputs, fragments):
    with raises_naming(*fragments):
        decoder_model(*[jnp.asarray(t) for t in inputs])
    with raises_naming(*fragments):  # numpy inputs and the direct validator say the same
        validate_tokens(decoder_model.cfg, *inputs)


@pytest.mark.parametrize(
    "inputs, fragments",
    [
        ((ok(),), ["arch='encdec'", "2 token array", "src, tgt", "got 1"]),
        ((_with(16), ok()), ["src", "token id 16"]),
        ((ok(), _with(-3)), ["tgt", "token id -3"]),
        ((ok((2, 7)), ok()), ["src", "length 7", "max_len=6"]),
        ((ok(), ok((2, 7))), ["tgt", "length 7", "max_len=6"]),
        ((ok(), ok().astype(np.float32)), ["tgt", "integer"]),
    ],
    ids=["one-input", "src-id", "tgt-id", "src-long", "tgt-long", "tgt-float"],
)
def test_bad_encdec_tokens(encdec_model, no_compute, inputs, fragments):
    with raises_naming(*fragments):
        encdec_model(*[jnp.asarray(t) for t in inputs])


def test_forward_validates_too(decoder_model, no_compute):
    # The probing entry point (model.forward) validates exactly like __call__.
    with raises_naming("token id 16"):
        decoder_model.forward(jnp.asarray(_with(16)))


def test_python_list_of_floats_is_a_value_error():
    # A nested Python list has no .dtype; the message must still be a clear ValueError.
    with raises_naming("integer"):
        validate_tokens(ModelConfig(**TINY), [[0.5, 1.0], [2.0, 3.0]])


def test_valid_boundary_tokens_pass():
    # Largest id (vocab − 1), id 0, length == max_len, and an empty batch are all valid.
    cfg = ModelConfig(**TINY)
    validate_tokens(cfg, np.array([[0, 15, 3, 4, 5, 6]], np.int32))
    validate_tokens(cfg, np.zeros((0, 4), np.int32))
    validate_tokens(cfg.replace(arch="encdec"), np.zeros((1, 6), np.int64), np.zeros((1, 2), np.uint8))


def test_shapes_are_validated_under_jit():
    # Under jit token values are abstract (ids are not checked), but arity and shapes still are.
    cfg = ModelConfig(**TINY)
    with raises_naming("length 7", "max_len=6"):
        jax.jit(lambda t: validate_tokens(cfg, t))(jnp.zeros((1, 7), jnp.int32))
    with raises_naming("integer"):
        jax.jit(lambda t: validate_tokens(cfg, t))(jnp.zeros((1, 3), jnp.float32))


def test_choices_are_typed_once_and_read_by_validation():
    """Every name field's valid values come from its Literal type or its registry (field_choices),
    which validation reads; no execution field (how the numbers are computed) is a model field."""
    choices = field_choices()
    assert choices["arch"] == ARCHS and choices["dtype"] == DTYPES and choices["pos"] == POSITIONS
    assert choices["placement"] == tuple(PLACEMENTS) == choices["enc_placement"] and choices["norm"] == tuple(NORMS)
    for field, valid in choices.items():
        with pytest.raises(ValueError, match=f"unknown {field} 'bogus'; valid choices: {', '.join(valid)}"):
            ModelConfig(**{field: "bogus", **({"arch": "encdec"} if field == "enc_placement" else {})})
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    assert not names & {"unroll_layers", "scan_remat", "compute_dtype"}


@pytest.mark.parametrize(
    "field, bad, closest",
    [
        ("placement", "postln", "post"),
        ("norm", "rms_norm", "rmsnorm"),
        ("arch", "decoders", "decoder"),
        ("norm", "zzz", None),
    ],
)
def test_an_unknown_choice_says_the_closest_valid_one(field, bad, closest):
    hint = f" (did you mean {closest!r}?)" if closest else ""
    with pytest.raises(ValueError) as info:
        ModelConfig(**{field: bad})
    assert str(info.value).startswith(f"unknown {field} {bad!r}; valid choices: ")
    assert str(info.value).endswith(hint) and (closest or "did you mean" not in str(info.value))


@pytest.mark.parametrize("module", ["models.config", "models.placements", "models.norms", "models.stack"])
def test_each_models_module_imports_first_without_a_cycle(module):
    """A fresh interpreter imports the module on its own (no import hidden inside a function)."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_models_hold_no_backend_checks():
    """How a model runs on a backend is an execution plan's choice (analysis.execution), not the model's."""
    for path in Path(models.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "default_backend" not in text and "devices(" not in text, path.name
