"""The loss the probes differentiate, and the random batches of the papers' initialization analyses.

decoder: next-token cross-entropy, logits[:, :-1] predict tokens[:, 1:].
encdec: next-token cross-entropy on the target, conditioned on the source.
encoder: per-token classification of `tokens` against `targets` (random by default).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from models import ModelConfig

Batch = Mapping[str, jax.Array]


def random_batch(cfg: ModelConfig, key: jax.Array, batch_size: int, seq_len: int) -> dict[str, jax.Array]:
    """Uniform random tokens (and targets) for `cfg.arch`, as in the papers' init analyses."""
    if seq_len > cfg.max_len:
        raise ValueError(f"seq_len={seq_len} > max_len={cfg.max_len}")
    if seq_len < 2 and cfg.arch != "encoder":
        raise ValueError(f"seq_len must be >= 2 for next-token loss, got {seq_len}")
    k1, k2 = jax.random.split(key)
    draw = lambda k: jax.random.randint(k, (batch_size, seq_len), 0, cfg.vocab)
    if cfg.arch == "encdec":
        return {"src": draw(k1), "tgt": draw(k2)}
    if cfg.arch == "encoder":
        return {"tokens": draw(k1), "targets": draw(k2)}
    return {"tokens": draw(k1)}


def model_inputs(cfg: ModelConfig, batch: Batch) -> tuple[jax.Array, ...]:
    return (batch["src"], batch["tgt"]) if cfg.arch == "encdec" else (batch["tokens"],)


def check_batch(cfg: ModelConfig, batch: Batch) -> None:
    """Clear errors for a batch that does not fit the arch, before any compute."""
    need = {"encdec": ("src", "tgt"), "encoder": ("tokens", "targets"), "decoder": ("tokens",)}[cfg.arch]
    missing = [k for k in need if k not in batch]
    if missing:
        raise ValueError(f"batch for arch={cfg.arch!r} needs keys {need}; missing {missing}")
    from models import validate_tokens

    validate_tokens(cfg, *model_inputs(cfg, batch))
    if cfg.arch == "encoder":
        targets = np.asarray(batch["targets"])
        if targets.shape != np.shape(batch["tokens"]):
            raise ValueError(f"targets shape {targets.shape} != tokens shape {np.shape(batch['tokens'])}")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean token cross-entropy; logits (..., V), labels (...) int."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[..., None], axis=-1))


def loss_from_logits(cfg: ModelConfig, logits: jax.Array, batch: Batch) -> jax.Array:
    if cfg.arch == "encoder":
        return cross_entropy(logits, batch["targets"])
    labels = batch["tgt"] if cfg.arch == "encdec" else batch["tokens"]
    return cross_entropy(logits[:, :-1], labels[:, 1:])
