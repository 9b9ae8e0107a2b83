"""`SquaredNormTap`: its gradient is ‖∂ℒ/∂site‖², the squared norm of the gradient a zero perturbation
at the same site gets (float64), per layer and per stack site, scanned and unrolled, under vmap; and
the forward is that of the model without taps, bit for bit, and so are the parameter gradients (to
float64 rounding under XLA's default code generation, which fuses the two programs differently).
"""

from __future__ import annotations

import os

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.execution.ops import PlannedLoop
from analysis.probe.probes import _site_gradient_points
from models import ModelOps, Transformer
from models.sites import SquaredNormTap, squared_norm_taps, zeros_like_sites
from tests.conftest import CODEGEN_FLAG
from tests.models.test_invariants import TOKENS, cfg_of, inputs_of, jitter


def _program(cfg, unroll_layers: int):
    """jit(vmap over two parameter sets): (loss, ∂ℒ/∂θ, ∂ℒ/∂site) with zero perturbations and
    (loss, ∂ℒ/∂θ, ∂ℒ/∂tap) with taps, from one generic upstream weighting of the logits; stacks of
    at most `unroll_layers` layers unrolled (analysis.execution.ops.PlannedLoop)."""
    model = jitter(Transformer(cfg, nnx.Rngs(0), ModelOps(layer_loop=PlannedLoop(unroll_layers=unroll_layers))))
    graphdef, state = nnx.split(model)
    inputs = inputs_of(cfg, TOKENS)
    shapes = jax.eval_shape(lambda s: nnx.merge(graphdef, s).forward(*inputs).sites, state)

    def loss(state, points):
        logits = nnx.merge(graphdef, state).forward(*inputs, perturb=points).logits
        weights = jnp.cos(jnp.arange(logits.size, dtype=logits.dtype)).reshape(logits.shape)
        return jnp.sum(logits * weights)

    def one(state):
        zeros = zeros_like_sites(shapes)
        taps = {name: squared_norm_taps(s) for name, s in shapes.items()}
        return jax.value_and_grad(loss, argnums=(0, 1))(state, zeros), jax.value_and_grad(loss, argnums=(0, 1))(
            state, taps
        )

    other = jax.tree.map(lambda a: a * 0.9 + 0.01, state)  # a second parameter set for the vmap
    states = jax.tree.map(lambda a, b: jnp.stack([a, b]), state, other)
    return jax.jit(jax.vmap(one))(states)


@pytest.mark.parametrize("arch, unroll", [("decoder", 0), ("decoder", 64), ("encdec", 0)])
def test_squared_norm_tap_gradient_is_the_squared_site_gradient_norm(arch: str, unroll: int) -> None:
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        cfg = cfg_of("residual", arch=arch, layers=3, dtype="float64")
        (loss_z, (g_state_z, g_sites)), (loss_t, (g_state_t, g_taps)) = jax.device_get(_program(cfg, unroll))
    assert loss_z.shape == (2,) and np.array_equal(loss_z, loss_t), "taps changed the forward"
    exact = CODEGEN_FLAG in os.environ.get("XLA_FLAGS", "")  # make test's -O0 pass
    for a, b in zip(jax.tree.leaves(g_state_z), jax.tree.leaves(g_state_t)):
        # bit for bit under the suite's -O0 code generation; XLA's default one fuses the two programs
        # differently (float64 rounding, ~1e-15 relative, in scanned stacks)
        if exact:
            np.testing.assert_array_equal(a, b, err_msg="taps changed the parameter gradients")
        else:
            np.testing.assert_allclose(
                a, b, rtol=1e-13, atol=1e-13 * np.max(np.abs(b)), err_msg="taps changed the parameter gradients"
            )
    checked = 0
    for name, stack in g_sites.items():
        for level, lead in (("layers", 2), ("stack", 1)):  # + the vmapped axis
            for site, g in stack[level].items():
                tap = g_taps[name][level][site]
                assert isinstance(tap, SquaredNormTap) and tap.zero.dtype == np.float64
                expected = np.sum(np.square(g), axis=tuple(range(lead, g.ndim)))
                assert tap.zero.shape == expected.shape == g.shape[:lead]
                assert np.all(expected > 0), f"{name}.{site}: a zero gradient checks nothing"
                np.testing.assert_allclose(tap.zero, expected, rtol=1e-12, err_msg=f"{name}.{level}.{site}")
                checked += 1
    assert checked >= 10


def test_squared_norm_taps_follow_the_sites_dtype() -> None:
    """A zero in the site's reduction dtype: float32 for bfloat16 and float32 sites."""
    sites = {
        "layers": {"a": jax.ShapeDtypeStruct((3, 2, 4, 8), jnp.bfloat16)},
        "stack": {"b": jax.ShapeDtypeStruct((2, 4, 8), jnp.float32)},
    }
    taps = squared_norm_taps(sites)
    assert taps["layers"]["a"].zero.shape == (3,) and taps["layers"]["a"].zero.dtype == jnp.float32
    assert taps["stack"]["b"].zero.shape == () and taps["stack"]["b"].zero.dtype == jnp.float32


def test_probes_tap_scanned_stacks_and_perturb_unrolled_ones() -> None:
    """The probe program's choice, per stack: an encoder-decoder whose 4-layer encoder scans and whose
    2-layer decoder is unrolled (a layer loop unrolling up to 3 layers) gets taps in the encoder only."""
    cfg = cfg_of("pre", arch="encdec", enc_layers=4, dec_layers=2)
    model = Transformer(cfg, nnx.Rngs(0), ModelOps(layer_loop=PlannedLoop(unroll_layers=3)))
    assert model.stacks["encoder"].layer_loop.scans(4) and not model.stacks["decoder"].layer_loop.scans(2)
    shapes = jax.eval_shape(lambda: model.forward(*inputs_of(cfg, TOKENS)).sites)
    points = _site_gradient_points(model, shapes)
    is_tap = lambda x: isinstance(x, SquaredNormTap)
    for stack, taps_expected in (("encoder", True), ("decoder", False)):
        leaves = jax.tree.leaves(points[stack], is_leaf=is_tap)
        assert leaves and all(is_tap(x) == taps_expected for x in leaves), stack
