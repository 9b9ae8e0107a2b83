"""The probe registry (analysis.probe.registry): every registered probe runs and yields its declared
quantities; the program composes the selected probes' needs; a probe and a placement added through
public registration alone appear in `lnscope list`, in the probe program's output and in the tidy
frame; bad options are clear errors naming the valid choices.

The numbers of the built-in probes are checked against independent references in test_probes.py,
test_cka_cost.py and test_similarity.py; this file checks the plumbing.
"""

from __future__ import annotations

import dataclasses

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from analysis.cli import main as lnscope
from analysis.probe import PROBES, Needs, Probe, ProbeConfig, ProbeContext, probe_at_init, register_probe
from analysis.probe.loss import model_inputs, random_batch
from analysis.probe.probes import CHEAP_PROBES, STEP_PROBES, CKAOptions, cheap_probes, probe_program
from analysis.probe.tidy import pairwise_quantities
from models import PLACEMENTS, ModelConfig, Transformer, build_model
from models.placements import Placement, Stream, Sub, register_placement

SMALL = dict(d_model=16, heads=2, d_ff=32, vocab=32, layers=2)
BATCH, LENGTH, SEEDS = 2, 6, (0, 3)
ENCDEC = ModelConfig(**SMALL, arch="encdec", placement="pre", enc_placement="post")


# ================================================================================================
# Every registered probe, through the public path (probe_at_init -> tidy rows).
# ================================================================================================
@pytest.fixture(scope="module")
def every_probe() -> pd.DataFrame:
    """All registered probes at once on an encoder-decoder (both stacks, cross-attention)."""
    pcfg = ProbeConfig(probes=tuple(PROBES), hessian_iters=2)
    return probe_at_init(ENCDEC, seeds=SEEDS, batch_size=BATCH, seq_len=LENGTH, probe_config=pcfg)


@pytest.mark.parametrize("name", list(PROBES))
def test_every_probe_yields_its_declared_quantities(every_probe: pd.DataFrame, name: str) -> None:
    probe = PROBES[name]
    assert probe.description and "\n" not in probe.description, f"{name}: one-line description"
    assert probe.compute.__doc__, f"{name}: its compute function's docstring holds the equation"
    assert probe.cost in ("cheap", "costly")
    assert (name in CHEAP_PROBES) == (probe.cost == "cheap")
    for quantity in probe.quantities:
        rows = every_probe[every_probe["quantity"] == quantity]
        assert len(rows), f"{name}: no rows of its quantity {quantity!r}"
        assert set(rows["seed"]) == set(SEEDS)
        assert np.isfinite(rows["value"]).all(), f"{name}/{quantity}: non-finite values at init"
        assert ((rows["other_layer"] >= 0) == (quantity in pairwise_quantities())).all()


@pytest.mark.parametrize("name", list(PROBES))
def test_each_probe_runs_alone(name: str) -> None:
    """Selected alone, a probe gets what it declared it needs (no other probe's needs to lean on) and
    returns only its declared quantities. Tracing only, nothing compiles."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(ENCDEC, nnx.Rngs(0))))
    batch = random_batch(ENCDEC, jax.random.key(1), BATCH, LENGTH)
    out = jax.eval_shape(lambda s: probe_program(graphdef, s, batch, ENCDEC, ProbeConfig(probes=(name,))), state)
    assert set(out) - {"loss"} == set(PROBES[name].quantities)  # default options: every declared quantity


def test_every_row_belongs_to_a_registered_probe(every_probe: pd.DataFrame) -> None:
    declared = {q for p in PROBES.values() for q in p.quantities} | {"loss"}
    assert set(every_probe["quantity"]) <= declared


# ================================================================================================
# The program composes needs: the backward pass and the site-gradient path run only when asked.
# ================================================================================================
@pytest.fixture
def spy():
    """A probe that records what the shared pass gave it (trace time), removed afterwards."""
    seen: list[ProbeContext] = []

    def compute(ctx: ProbeContext, options: None) -> dict:
        """Records the context; returns the loss as a model-level value."""
        seen.append(ctx)
        return {"spy": {"model": {"layers": {}, "stack": {"loss": ctx.loss}}}}

    register_probe(Probe("spy", "records the probe context (test)", compute))
    yield seen
    del PROBES["spy"]


@pytest.mark.parametrize(
    "others, param_grads, site_grads, summary",
    [
        ((), False, False, False),
        (("act_norm",), False, False, True),
        (("param_grad_norm",), True, False, False),
        (("act_grad_norm",), True, True, False),
    ],
)
def test_the_program_runs_only_what_the_selected_probes_need(spy, others, param_grads, site_grads, summary) -> None:
    cfg = ModelConfig(**SMALL)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
    batch = random_batch(cfg, jax.random.key(1), BATCH, LENGTH)
    jax.eval_shape(lambda s: probe_program(graphdef, s, batch, cfg, ProbeConfig(probes=("spy", *others))), state)
    ctx = spy[-1]
    assert (ctx.param_grads is not None) == param_grads
    assert (ctx.site_grad_norm is not None) == site_grads
    assert bool(ctx.summary["decoder"]) == summary


# ================================================================================================
# A toy probe and a toy placement, added through public registration only.
# ================================================================================================
@dataclasses.dataclass(frozen=True)
class ToyOptions:
    scale: float = 1.0


def toy_mean(ctx: ProbeContext, options: ToyOptions) -> dict:
    """scale · mean over batch, tokens and features of resid_post, per layer (a toy, not a measure)."""
    return {
        "toy_mean": {
            name: {
                "layers": {"resid_post": options.scale * jnp.mean(s["layers"]["resid_post"], axis=(1, 2, 3))},
                "stack": {},
            }
            for name, s in ctx.sites.items()
        }
    }


def half_post(s: Sub, st: Stream) -> Stream:
    """Toy placement: h ← LN(h + S(h)/2) (Post-LN with a halved branch; for the registry test only)."""
    h = st["x"]
    return {**st, "x": s.norm("ln", h + 0.5 * s.branch(h))}


@pytest.fixture
def toys():
    probe = register_probe(
        Probe("toy_mean", "scale · mean of resid_post per layer (test toy)", toy_mean, options=ToyOptions)
    )
    kinds = ("attn", "cross", "mlp")
    placement = register_placement(
        Placement("toy_half", {k: half_post for k in kinds}, {k: ("ln",) for k in kinds}, "registry test toy")
    )
    yield probe, placement
    del PROBES["toy_mean"], PLACEMENTS["toy_half"]


def test_a_registered_probe_and_placement_appear_everywhere(toys, capsys) -> None:
    assert lnscope(["list"], prepare=False) == 0
    listing = capsys.readouterr().out
    assert "toy_mean" in listing and "scale · mean of resid_post per layer (test toy)" in listing
    assert "toy_half" in listing and "registry test toy" in listing

    cfg = ModelConfig(**SMALL, placement="toy_half")
    pcfg = ProbeConfig(probes=("toy_mean", "act_norm"), toy_mean_scale=2.0)  # flat keyword of the toy's option
    assert pcfg == ProbeConfig(probes=("toy_mean", "act_norm"), options={"toy_mean": ToyOptions(scale=2.0)})
    assert pcfg.toy_mean_scale == 2.0 and pcfg.option("toy_mean") == ToyOptions(2.0)
    df = probe_at_init(cfg, seeds=(1,), batch_size=BATCH, seq_len=LENGTH, probe_config=pcfg)
    rows = df[df["quantity"] == "toy_mean"].sort_values("layer")
    assert list(rows["layer"]) == list(range(cfg.layers)) and set(rows["placement"]) == {"toy_half"}

    # independent: the same model's resid_post from its own forward, reduced in numpy
    model = build_model(cfg, 1)
    batch = random_batch(cfg, jax.random.fold_in(jax.random.key(1), 1), BATCH, LENGTH)  # probe_at_init's batch
    resid = np.asarray(model.forward(*model_inputs(cfg, batch)).sites["decoder"]["layers"]["resid_post"], np.float64)
    np.testing.assert_allclose(rows["value"], 2.0 * resid.mean(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    # the toy placement is wired as declared: its resid_post is normalized (Post-LN family)
    stream_rms = df[(df["quantity"] == "act_norm") & (df["site"] == "resid_post")]["value"]
    np.testing.assert_allclose(stream_rms, 1.0, rtol=1e-3)
    assert "toy_mean" in cheap_probes() and "toy_mean" not in CHEAP_PROBES  # CHEAP_PROBES: the built-in set


def test_registries_are_clean_after_the_toy_test() -> None:
    assert "toy_mean" not in PROBES and "toy_half" not in PLACEMENTS and "spy" not in PROBES


# ================================================================================================
# Options and registration errors name the bad value and the valid choices.
# ================================================================================================
def _raises(exc, fn, *needles: str) -> None:
    with pytest.raises(exc) as info:
        fn()
    for needle in needles:
        assert needle in str(info.value), f"{needle!r} not in: {info.value}"


def test_bad_options_and_registrations_are_clear_errors() -> None:
    _raises(ValueError, lambda: ProbeConfig(options={"ckaa": {}}), "'ckaa'", "cka", "hessian_top_eig")
    _raises(ValueError, lambda: ProbeConfig(options={"cka": {"tokenz": 8}}), "tokenz", "tokens", "null", "debiased")
    _raises(ValueError, lambda: ProbeConfig(options={"act_norm": {}}), "act_norm", "takes no options", "cka")
    _raises(ValueError, lambda: ProbeConfig(options={"cka": 8}), "CKAOptions")
    _raises(ValueError, lambda: ProbeConfig(options={"cka": {"null": "quarter"}}), "quarter", "full", "half", "off")
    _raises(TypeError, lambda: ProbeConfig(cka_tokenz=8), "cka_tokenz", "cka_tokens", "hessian_iters")
    _raises(ValueError, lambda: ProbeConfig(cka_tokens=8, options={"cka": {}}), "cka_tokens", "both")
    _raises(ValueError, lambda: ProbeConfig(similarity_sites="resid_post"), "similarity_sites")
    _raises(AttributeError, lambda: ProbeConfig().cka_tokenz, "cka_tokenz", "cka_tokens")
    _raises(ValueError, lambda: ProbeConfig().option("nope"), "nope", "act_norm")
    _raises(ValueError, lambda: register_probe(PROBES["cka"]), "'cka'", "already registered")
    clash = Probe("cka_again", "clashes with cka's quantities", PROBES["cka"].compute, quantities={"cka_null": None})
    _raises(ValueError, lambda: register_probe(clash), "cka_null", "cka")
    _raises(ValueError, lambda: Probe("x", "bad cost", PROBES["cka"].compute, cost="cheapish"), "cheapish", "costly")
    _raises(ValueError, lambda: Probe("x", "mutable options", PROBES["cka"].compute, options=dict), "frozen dataclass")
    _raises(ValueError, lambda: register_placement(PLACEMENTS["post"]), "'post'", "already registered")
    assert "cka_again" not in PROBES


def test_probe_config_keeps_its_historical_keywords() -> None:
    """The flat keywords set the probes' own options; equal settings are equal, hashable configs (the
    compile key of probe_at_init), and default options are not stored."""
    assert STEP_PROBES.option("cka") == CKAOptions(tokens=128, null="half")
    assert (STEP_PROBES.cka_tokens, STEP_PROBES.cka_null, STEP_PROBES.cka_debiased) == (128, "half", True)
    both = ProbeConfig(similarity_sites=("resid_post",))
    assert both.option("cos_adjacent").sites == both.option("cos_to_last").sites == ("resid_post",)
    assert ProbeConfig(cka_tokens=None, hessian_iters=20) == ProbeConfig() and ProbeConfig().options == ()
    assert hash(ProbeConfig(cka_null="half", cka_tokens=128)) == hash(STEP_PROBES)
    assert ProbeConfig(output_change_lr=1e-3).output_change_lr == 1e-3
    assert ProbeConfig(probes=["act_norm"]).probes == ("act_norm",)
    random_sign = ProbeConfig(output_change_mode="random_sign").option("output_change")
    assert PROBES["output_change"].needs_for(random_sign) == Needs()  # no backward pass for it
