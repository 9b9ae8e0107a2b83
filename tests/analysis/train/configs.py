"""The tiny training run the store tests share: a 2-layer d=16 decoder on the Markov task, two seeds,
six updates with probes, evaluations and checkpoints every few steps (one compiled program for every
test that uses it)."""

from __future__ import annotations

from analysis.train import TaskConfig, TrainConfig
from models import ModelConfig

TINY = dict(layers=2, d_model=16, heads=2, d_ff=32, vocab=32, max_len=32)


def tiny_run(**changes) -> TrainConfig:
    """The shared tiny run's config, with `changes` (TrainConfig fields) applied."""
    base = dict(
        model=ModelConfig(arch="decoder", **TINY),
        task=TaskConfig(name="markov", seq_len=16, batch_size=4),
        steps=6,
        seeds=(0, 1),
        probe_every=3,
        probes=("act_grad_norm", "param_grad_norm"),
        eval_every=3,
        eval_batches=2,
        checkpoint_every=2,
    )
    return TrainConfig(**{**base, **changes})
