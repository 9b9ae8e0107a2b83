"""analysis.execution.ops.PlannedLoop: an unrolled loop (with its gradient barrier) and a scan that
recomputes its layers in the backward pass compute what the model's own scan (models.ops.ScanLoop)
computes, on the same parameters.

Values and gradients (every parameter, every probe site through zero perturbations) for Mix-LN's two
segments, ResiDual's dual stream and the encoder-decoder, all three loops of a case in one compiled
program; forward-over-reverse (the Hessian probe's path); every init-time probe in float64; the
switches themselves (which stacks unroll, which recompute).
"""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.execution import ExecutionPlan
from analysis.execution.ops import PlannedLoop, grad_barrier
from analysis.probe.api import probe_at_init
from models import ModelConfig, ModelOps, Transformer
from models.sites import zeros_like_sites
from tests.models.structural_signatures import PLACEMENT_REPRESENTATIVES, PLACEMENT_SIGNATURES
from tests.models.test_invariants import SAME_F32, TOKENS, cfg_of, count_eqns, inputs_of, jit_apply, jitter

SCANNED = ModelOps()  # the model's own loop: the reference
LOOPS = {
    "unrolled": ModelOps(layer_loop=PlannedLoop(unroll_layers=64)),
    "recomputed": ModelOps(layer_loop=PlannedLoop(unroll_layers=0, remat=True)),
}
# The stack paths the loop can take, in the fast tier: segments (mix), a second stream (residual),
# per-layer parameters, cross-attention memory and two stacks (admin encdec). The slow tier adds
# every other placement structure (the layer input of b2t, per-head norm slots of hybrid, per-layer
# constants of lns, ...). Placements of one structure (tests/models/structural_signatures.py:
# stack-level constants and init gains apart, the same per-layer parameters, per-layer constants,
# segments, stream form and sites) add nothing the loop could get wrong. Nor does an arch: the loop
# gets a stack's layer body, carry, per-layer slices and segment length (models.stack), the
# cross-attention memory closed over inside the body, so a structure's encdec version hands it what
# its decoder version does, once per stack (admin encdec shows two stacks with memory).
CASES = [("mix", "decoder"), ("residual", "decoder"), ("admin", "encdec")]
REST = [(p, "decoder") for p in PLACEMENT_REPRESENTATIVES if p not in {"mix", "residual", "admin", "hybrid"}] + [
    ("hybrid", "encoder"),
]


def graphdef_with(cfg: ModelConfig, ops: ModelOps) -> nnx.GraphDef:
    return nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0), ops)))[0]


def _value_and_grads(model, tokens, cfg):
    """Logits, ∂(Σ w·logits)/∂θ and ∂/∂site for a fixed weighting w (a generic upstream gradient)."""
    graphdef, state = nnx.split(model)
    inputs = inputs_of(cfg, tokens)

    def f(state, perturb):
        out = nnx.merge(graphdef, state).forward(*inputs, perturb=perturb)
        weights = jnp.cos(jnp.arange(out.logits.size, dtype=jnp.float32)).reshape(out.logits.shape)
        return jnp.sum(out.logits * weights), out.logits

    shapes = jax.eval_shape(lambda s: nnx.merge(graphdef, s).forward(*inputs).sites, state)
    (_, logits), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(state, zeros_like_sites(shapes))
    return logits, grads


def loop_results(cases: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, object]]:
    """{case: {"scanned" | "unrolled" | "recomputed": (logits, grads)}}, one compiled program."""
    models, cfgs, labels = [], [], []
    for placement, arch in cases:
        # mix at 4 layers: a Post-LN and a Pre-LN segment of 2 layers each
        cfg = cfg_of(placement, arch=arch, layers=4 if placement == "mix" else 2)
        scanned = jitter(Transformer(cfg, nnx.Rngs(0), SCANNED))
        state = nnx.state(scanned)
        models.append(scanned)
        models += [nnx.merge(graphdef_with(cfg, ops), state) for ops in LOOPS.values()]  # the same parameters
        cfgs += [cfg] * (1 + len(LOOPS))
        labels += [f"{placement}/{arch}/{name}" for name in ("scanned", *LOOPS)]
    results = jit_apply(models, lambda m, i, t: _value_and_grads(m, t, cfgs[i]), TOKENS, labels=labels)
    per = 1 + len(LOOPS)
    return {case: dict(zip(("scanned", *LOOPS), results[i * per : (i + 1) * per])) for i, case in enumerate(cases)}


def assert_equal_to_rounding(case: tuple[str, str], first, second) -> None:
    """Two pytrees of the same structure, leaves equal to float32 rounding."""
    leaves_1, tree_1 = jax.tree_util.tree_flatten_with_path(first)
    leaves_2, tree_2 = jax.tree_util.tree_flatten_with_path(second)
    assert tree_1 == tree_2, case
    for (path, a), (_, b) in zip(leaves_1, leaves_2):
        np.testing.assert_allclose(
            np.asarray(b), np.asarray(a), **SAME_F32, err_msg=f"{case} {jax.tree_util.keystr(path)}"
        )


@pytest.fixture(scope="module")
def fast_results():
    return loop_results(CASES)


@pytest.mark.parametrize("loop", list(LOOPS))
def test_planned_loops_equal_the_scan_values_and_gradients(fast_results, loop):
    for case, results in fast_results.items():
        assert_equal_to_rounding(case, results["scanned"], results[loop])


@pytest.mark.slow
def test_planned_loops_equal_the_scan_every_other_placement():
    for case, results in loop_results(REST).items():
        for loop in LOOPS:
            assert_equal_to_rounding(case, results["scanned"], results[loop])


def test_the_loop_tiers_cover_every_placement_structure():
    # Derived from the registry, so a placement with a new structure joins the slow tier by itself.
    assert {PLACEMENT_SIGNATURES[p] for p, _ in CASES + REST} == set(PLACEMENT_SIGNATURES.values())
    assert len(set(CASES + REST)) == len(CASES) + len(REST)


def test_grad_barrier_is_the_identity_with_identical_gradients():
    # The barrier changes what XLA may fuse, not the numbers: forward and backward are the identity.
    x = {"x": jnp.linspace(-1.0, 1.0, 6), "dual": jnp.arange(3.0)}
    f = lambda t: jnp.sum(jnp.sin(t["x"]) ** 2) + jnp.sum(t["dual"] ** 3)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), grad_barrier(x), x))
    g_plain, g_barrier = jax.grad(f)(x), jax.grad(lambda t: f(grad_barrier(t)))(x)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), g_plain, g_barrier))
    # forward-over-reverse (the Hessian probe) goes through it too
    hvp = jax.jvp(jax.grad(lambda t: f(grad_barrier(t))), (x,), (jax.tree.map(jnp.ones_like, x),))[1]
    np.testing.assert_allclose(np.asarray(hvp["dual"]), 6.0 * np.arange(3.0))


def _grad_jaxpr(cfg: ModelConfig, ops: ModelOps):
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0), ops)))
    loss = lambda s: jnp.sum(nnx.merge(graphdef, s)(*inputs_of(cfg)))
    return jax.make_jaxpr(jax.grad(loss))(state)


@pytest.mark.parametrize("placement", ["pre", "mix"])
def test_the_threshold_switches_between_loop_and_scan(placement):
    # At or below unroll_layers the program grows with depth (an unrolled loop); above, it is one scan
    # per segment and the same at every depth (compile time flat for deep stacks).
    def size(layers, threshold):
        cfg = cfg_of(placement, layers=layers)
        graphdef, state = nnx.split(
            nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0), ModelOps(PlannedLoop(threshold))))
        )
        return count_eqns(jax.make_jaxpr(lambda s, *t: nnx.merge(graphdef, s)(*t))(state, *inputs_of(cfg)))

    assert size(3, 4) > size(2, 4)
    assert size(5, 4) == size(12, 4)


def test_only_scanned_stacks_recompute_and_only_when_asked():
    loop = PlannedLoop(unroll_layers=2, remat=True)
    assert not loop.scans(2) and loop.scans(3)
    cfg = cfg_of("pre", layers=2)
    assert "remat" in str(_grad_jaxpr(cfg, ModelOps(PlannedLoop(0, remat=True))))
    assert "remat" not in str(_grad_jaxpr(cfg, ModelOps(PlannedLoop(0, remat=False))))
    assert "remat" not in str(_grad_jaxpr(cfg, ModelOps(PlannedLoop(2, remat=True)))), "an unrolled stack recomputed"


def test_forward_over_reverse_goes_through_recomputed_layers():
    # The Hessian probe's Hessian-vector products differentiate the gradient forward (jvp of grad).
    cfg = cfg_of("post", layers=3)
    graphdef, state = nnx.split(jitter(Transformer(cfg, nnx.Rngs(0))))
    direction = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size, dtype=a.dtype)).reshape(a.shape), state)
    hvps = []
    for remat in (False, True):
        g = graphdef_with(cfg, ModelOps(PlannedLoop(0, remat=remat)))
        loss = lambda s, g=g: jnp.sum(jnp.tanh(nnx.merge(g, s)(*inputs_of(cfg))))
        hvps.append(jax.jit(lambda s, d, loss=loss: jax.jvp(jax.grad(loss), (s,), (d,))[1])(state, direction))
    for a, b in zip(jax.tree.leaves(hvps[0]), jax.tree.leaves(hvps[1])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_every_init_probe_is_unchanged_by_recomputation():
    # float64, so that the tolerance sees a wrong recomputation and not float32 rounding: CKA and its
    # null, site-gradient taps (scanned stacks), LN Jacobian gains, in-layer summaries, cosines.
    frames = []
    with jax.enable_x64(True):
        cfg = ModelConfig(
            placement="post", layers=3, d_model=16, heads=2, d_ff=32, vocab=32, max_len=16, dtype="float64"
        )
        for remat in (False, True):
            plan = ExecutionPlan(unroll_layers=0, remat=remat)
            frames.append(probe_at_init(cfg, seeds=range(2), batch_size=2, seq_len=8, plan=plan))
    saved, recomputed = frames
    keys = [c for c in saved.columns if c != "value"]
    assert saved[keys].equals(recomputed[keys])
    np.testing.assert_allclose(recomputed["value"].to_numpy(), saved["value"].to_numpy(), rtol=1e-12, atol=1e-14)
