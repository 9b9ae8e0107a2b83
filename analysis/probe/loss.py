"""The loss the probes differentiate, and the random batches of the papers' initialization analyses.

decoder: next-token cross-entropy, logits[:, :-1] predict tokens[:, 1:].
encdec: next-token cross-entropy on the target, conditioned on the source.
encoder: per-token classification of `tokens` against `targets` (random by default).

An optional `loss_mask` key (same shape as the labels' source array: `tokens`, `tgt` or `targets`)
weights the token losses, ℒ = Σ m_t·nll_t / max(Σ m_t, 1): the training tasks use it to score only
the target part of a (source, separator, target) sequence or to skip padding. Without it every label
counts, exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from models import ModelConfig, validate_tokens

Batch = Mapping[str, jax.Array]
LOSS_MASK = "loss_mask"


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
    validate_tokens(cfg, *model_inputs(cfg, batch))
    if cfg.arch == "encoder":
        targets = np.asarray(batch["targets"])
        if targets.shape != np.shape(batch["tokens"]):
            raise ValueError(f"targets shape {targets.shape} != tokens shape {np.shape(batch['tokens'])}")
    if LOSS_MASK in batch:
        labels_key = {"encdec": "tgt", "encoder": "targets", "decoder": "tokens"}[cfg.arch]
        if np.shape(batch[LOSS_MASK]) != np.shape(batch[labels_key]):
            raise ValueError(
                f"{LOSS_MASK} shape {np.shape(batch[LOSS_MASK])} != {labels_key} shape {np.shape(batch[labels_key])}"
            )


def cross_entropy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean token cross-entropy; logits (..., V), labels (...) int, optional weights (...) of the labels.

    With weights: Σ w·nll / max(Σ w, 1) (an all-zero mask gives 0, not NaN).
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    if weights is None:
        return jnp.mean(nll)
    weights = weights.astype(nll.dtype)
    return jnp.sum(weights * nll) / jnp.maximum(jnp.sum(weights), 1.0)


def loss_from_logits(cfg: ModelConfig, logits: jax.Array, batch: Batch) -> jax.Array:
    mask = batch.get(LOSS_MASK)
    if cfg.arch == "encoder":
        return cross_entropy(logits, batch["targets"], mask)
    labels = batch["tgt"] if cfg.arch == "encdec" else batch["tokens"]
    return cross_entropy(logits[:, :-1], labels[:, 1:], None if mask is None else mask[:, 1:])
