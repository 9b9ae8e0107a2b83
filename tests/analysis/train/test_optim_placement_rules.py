"""A placement's optimizer rules (models.Placement.optimizer_rules, CompleteP's depth rules) as the
optimizer applies them: the parameters of the stack's layers get AdamW with ε × m^(−α) and an update
× m^(α−1), everything else the plain AdamW; a placement without rules gets exactly the plain optimizer."""

from __future__ import annotations

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis.train import OptimConfig
from analysis.train.optim import OTHER_GROUP, make_optimizer, param_groups, placement_rules
from models import ModelConfig, Transformer

TINY = dict(d_model=8, heads=2, d_ff=16, vocab=16, max_len=4)
# float32 AdamW arithmetic vs a float64 restatement: a few ulps of an O(1) update.
ADAM_RTOL = 1e-5


def _adamw_first_step(g: np.ndarray, p: np.ndarray, o: OptimConfig, eps: float) -> np.ndarray:
    """One AdamW update at unit learning rate (bias-corrected m̂ = g, v̂ = g²)."""
    g, p = g.astype(np.float64), p.astype(np.float64)
    return -(g / (np.abs(g) + eps) + o.weight_decay * p)


def _flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_completep_rules_scale_the_layers_only(alpha: float):
    cfg = ModelConfig(
        arch="encdec",
        placement="completep",
        enc_layers=2,
        dec_layers=3,
        completep_alpha=alpha,
        completep_base_layers=1,
        **TINY,
    )
    assert placement_rules(cfg) == {
        "encoder": pytest.approx({"lr": 2.0 ** (alpha - 1), "eps": 2.0**-alpha}),
        "decoder": pytest.approx({"lr": 3.0 ** (alpha - 1), "eps": 3.0**-alpha}),
    }
    params = nnx.state(Transformer(cfg, nnx.Rngs(0)))
    groups = param_groups(params, placement_rules(cfg))
    paths = {jax.tree_util.keystr(p): g for p, g in jax.tree_util.tree_flatten_with_path(groups)[0]}
    for path, group in paths.items():
        in_layers = path.startswith("['stacks']") and "['layers']" in path
        expected = ("encoder" if "['encoder']" in path else "decoder") if in_layers else OTHER_GROUP
        assert group == expected, path
    # eps large enough that its scaling shows in the update (|g| ~ eps).
    o = OptimConfig(eps=0.3, weight_decay=0.1)
    opt = make_optimizer(o, cfg)
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), params)
    with jax.numpy_dtype_promotion("standard"):
        updates, _ = opt.update(grads, opt.init(params), params)
    g, p, u = _flat(grads), _flat(params), _flat(updates)
    for path, group in paths.items():
        layers = {"encoder": 2, "decoder": 3}.get(group)
        lr, eps = (1.0, o.eps) if layers is None else (layers ** (alpha - 1), o.eps * layers**-alpha)
        want = lr * _adamw_first_step(g[path], p[path], o, eps)
        np.testing.assert_allclose(u[path], want, rtol=ADAM_RTOL, atol=1e-7, err_msg=path)


def test_no_rules_is_the_plain_optimizer():
    cfg = ModelConfig(placement="pre", layers=2, **TINY)
    assert placement_rules(cfg) == {}
    o = OptimConfig()
    plain, with_model = make_optimizer(o), make_optimizer(o, cfg)
    params = nnx.state(Transformer(cfg, nnx.Rngs(0)))
    grads = jax.tree.map(lambda a: jnp.full(a.shape, 0.5, a.dtype), params)
    with jax.numpy_dtype_promotion("standard"):
        s1, s2 = plain.init(params), with_model.init(params)
        assert jax.tree.structure(s1) == jax.tree.structure(s2)
        u1, _ = plain.update(grads, s1, params)
        u2, _ = with_model.update(grads, s2, params)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_completep_trains_two_steps_with_its_rules():
    # The training loop (vmapped seeds, grouped optimizer state) with CompleteP's rules at α = ½.
    from analysis.train import TaskConfig, TrainConfig, train

    model = ModelConfig(
        arch="decoder",
        placement="completep",
        completep_alpha=0.5,
        layers=2,
        d_model=16,
        heads=2,
        d_ff=32,
        vocab=32,
        max_len=32,
    )
    cfg = TrainConfig(
        model=model,
        task=TaskConfig(name="markov", seq_len=16, batch_size=4),
        steps=2,
        seeds=(0, 1),
        probe_every=0,
        eval_every=0,
    )
    r = train(cfg)
    assert r.status == {0: "finished", 1: "finished"}
    loss = r.curves[r.curves.quantity == "loss"]["value"]
    assert len(loss) == 4 and np.isfinite(loss).all()
