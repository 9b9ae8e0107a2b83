"""Training tasks (a registry) and their layout for each architecture; batches are drawn inside jit.

Two kinds of task:
    seq2seq  copy, reverse, sort: a source of content symbols and its target (the same symbols, the
             reverse, or sorted), lengths uniform in [min_length, length], optional label noise.
    lm       markov: a fixed random first-order Markov chain over the symbols (a fast LM task that
             separates placements early in training); charlm: windows of a character corpus.

Ids: seq2seq uses 0 = padding, 1 = separator (also the decoder's BOS), content symbols 2, 3, ...;
LM tasks use 0..S−1 for the symbols and S for the encoder's mask token.

Layouts (batch keys of analysis.probe.loss; `loss_mask` marks the scored labels):
    seq2seq  decoder: tokens = [source, SEP, target, PAD...] (2·length+1), loss on the target only
             encdec:  src = source, tgt = [SEP, target] (length+1), loss on the target
             encoder: tokens = source, targets = target (aligned), loss on the non-padding positions
    lm       decoder: tokens = window (next-token loss on every position)
             encdec:  src = the window's first half, tgt = the rest, starting from the last source
                      token (the continuation is predicted)
             encoder: masked LM: a random `mlm_rate` of the window replaced by the mask id, predicted

Everything a batch needs is a device array (`TaskData.arrays`: the corpus splits, the chain's
transition matrix), and a batch is a pure function of (arrays, key), so the training step draws its
own batches inside the compiled program: no host round trip per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from analysis.probe.loss import LOSS_MASK
from analysis.train.corpus import load_corpus
from analysis.train.fields import check_choice, check_int, check_number
from models import ModelConfig

PAD, SEP, FIRST_SYMBOL = 0, 1, 2
Arrays = dict[str, jax.Array]


@dataclass(frozen=True)
class TaskConfig:
    """The data: a task from `analysis.train.tasks.TASKS`, its sizes and its fixed randomness.

    Attributes:
        name: the task; copy, reverse, sort are sequence-to-sequence, markov, charlm language modelling.
        vocab: content symbols of copy/reverse/sort/markov; None = as many as the model's vocab allows
            (copy/reverse/sort reserve 2 ids for padding and the separator, an encoder's LM task 1 mask id).
            charlm takes its symbols from the corpus (leave None).
        length: source length of copy/reverse/sort; the maximum when min_length is set.
        min_length: shortest source of copy/reverse/sort; lengths uniform in [min_length, length],
            padded; None = every source has `length` symbols.
        noise: copy/reverse/sort label noise; each target symbol is replaced by a uniformly random one
            with this probability (the loss floor is then the noise's entropy, reported).
        seq_len: window length (tokens) of markov and charlm.
        batch_size: sequences per training step (per seed).
        corpus: charlm's UTF-8 text file; None = the standard library's `pydoc_data.topics`.
        val_fraction: charlm's validation split, the last fraction of the corpus.
        data_seed: seed of what is fixed across model seeds; the Markov chain's transition matrix and
            every validation batch. Training batches come from each model seed.
        markov_sharpness: the chain's transition rows are softmax(sharpness·N(0, 1)); larger = more
            predictable (lower entropy rate).
        mlm_rate: fraction of tokens masked and predicted; encoder arch with markov/charlm (BERT's).
    """

    name: str = "markov"
    vocab: int | None = None
    length: int = 16
    min_length: int | None = None
    noise: float = 0.0
    seq_len: int = 64
    batch_size: int = 8
    corpus: str | None = None
    val_fraction: float = 0.1
    data_seed: int = 0
    markov_sharpness: float = 2.0
    mlm_rate: float = 0.15

    def __post_init__(self) -> None:
        check_choice("task", self.name, TASKS)
        if self.vocab is not None:
            if self.name == "charlm":
                raise ValueError("vocab is set by the corpus for task 'charlm'; leave it None")
            check_int("vocab", self.vocab, 2)
        check_int("length", self.length)
        if self.min_length is not None:
            check_int("min_length", self.min_length)
            if self.min_length > self.length:
                raise ValueError(f"min_length={self.min_length} > length={self.length}")
        check_number("noise", self.noise, 0.0, 1.0, high_open=True)
        check_int("seq_len", self.seq_len, 2)
        check_int("batch_size", self.batch_size)
        check_number("val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        check_int("data_seed", self.data_seed, 0)
        check_number("markov_sharpness", self.markov_sharpness, 0.0)
        check_number("mlm_rate", self.mlm_rate, 0.0, 1.0, low_open=True)
        if self.corpus is not None:
            if self.name != "charlm":
                raise ValueError(f"corpus is only read by task 'charlm', got task {self.name!r}")
            path = Path(self.corpus)
            if not path.is_file():
                raise ValueError(f"corpus {self.corpus!r} is not a readable file")


@dataclass(frozen=True)
class Task:
    """A registry entry: what kind of task it is, and how its sequences are drawn."""

    kind: str  # "seq2seq" | "lm"
    description: str
    sample: Callable[..., Any]  # (cfg, symbols, arrays, key, batch_size, split) -> sequences


# ---------------------------------------------------------------------------------------------
# Samplers. seq2seq: (src (B, M), tgt (B, M), valid (B, M) bool); lm: windows (B, T) int32.
# ---------------------------------------------------------------------------------------------
def _source(cfg: TaskConfig, symbols: int, key: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
    k_len, k_sym = jax.random.split(key)
    low = cfg.min_length if cfg.min_length is not None else cfg.length
    lengths = jax.random.randint(k_len, (batch, 1), low, cfg.length + 1)
    valid = jnp.arange(cfg.length)[None, :] < lengths  # (B, M)
    src = jax.random.randint(k_sym, (batch, cfg.length), FIRST_SYMBOL, FIRST_SYMBOL + symbols)
    return jnp.where(valid, src, PAD), valid


def _with_noise(cfg: TaskConfig, symbols: int, key: jax.Array, tgt: jax.Array, valid: jax.Array) -> jax.Array:
    if cfg.noise == 0:
        return tgt
    k_flip, k_sym = jax.random.split(key)
    flip = jax.random.bernoulli(k_flip, cfg.noise, tgt.shape) & valid
    return jnp.where(flip, jax.random.randint(k_sym, tgt.shape, FIRST_SYMBOL, FIRST_SYMBOL + symbols), tgt)


def _seq2seq(transform: Callable[[jax.Array, jax.Array], jax.Array]):
    def sample(cfg, symbols, arrays, key, batch, split):
        k_src, k_noise = jax.random.split(key)
        src, valid = _source(cfg, symbols, k_src, batch)
        tgt = jnp.where(valid, transform(src, valid), PAD)
        return src, _with_noise(cfg, symbols, k_noise, tgt, valid), valid

    return sample


def _reverse(src: jax.Array, valid: jax.Array) -> jax.Array:
    n = jnp.sum(valid, axis=1, keepdims=True)
    index = jnp.clip(n - 1 - jnp.arange(src.shape[1])[None, :], 0, src.shape[1] - 1)
    return jnp.take_along_axis(src, index, axis=1)


def _sort(src: jax.Array, valid: jax.Array) -> jax.Array:
    big = jnp.iinfo(src.dtype).max  # padding sorts last
    return jnp.sort(jnp.where(valid, src, big), axis=1)


def _markov(cfg, symbols, arrays, key, batch, split):
    """x_0 uniform, x_t ~ P[x_{t−1}]; the chain's log-transition matrix is `arrays["log_p"]`."""
    k0, k_rest = jax.random.split(key)
    x0 = jax.random.randint(k0, (batch,), 0, symbols)

    def step(prev, k):
        nxt = jax.random.categorical(k, arrays["log_p"][prev], axis=-1).astype(jnp.int32)
        return nxt, nxt

    _, rest = jax.lax.scan(step, x0.astype(jnp.int32), jax.random.split(k_rest, cfg.seq_len - 1))
    return jnp.concatenate([x0[:, None].astype(jnp.int32), rest.T], axis=1)


def _charlm(cfg, symbols, arrays, key, batch, split):
    """Random windows of the split's device-resident character ids."""
    data = arrays[split]
    starts = jax.random.randint(key, (batch, 1), 0, data.shape[0] - cfg.seq_len + 1)
    return data[starts + jnp.arange(cfg.seq_len)[None, :]]


TASKS: dict[str, Task] = {
    "copy": Task("seq2seq", "target = source", _seq2seq(lambda src, valid: src)),
    "reverse": Task("seq2seq", "target = source reversed", _seq2seq(_reverse)),
    "sort": Task("seq2seq", "target = source sorted", _seq2seq(_sort)),
    "markov": Task("lm", "a fixed random first-order Markov chain over the symbols", _markov),
    "charlm": Task("lm", "character windows of a text corpus (default: pydoc_data.topics)", _charlm),
}


# ---------------------------------------------------------------------------------------------
# Layouts: sequences -> the batch dict of each architecture.
# ---------------------------------------------------------------------------------------------
def _seq2seq_decoder(src, tgt, valid, symbols, key, cfg):
    n = jnp.sum(valid, axis=1, keepdims=True)  # (B, 1)
    pos = jnp.arange(2 * cfg.length + 1)[None, :]
    src_part = jnp.take_along_axis(src, jnp.clip(pos, 0, cfg.length - 1), axis=1)
    tgt_part = jnp.take_along_axis(tgt, jnp.clip(pos - n - 1, 0, cfg.length - 1), axis=1)
    is_tgt = (pos > n) & (pos <= 2 * n)
    tokens = jnp.where(pos < n, src_part, jnp.where(pos == n, SEP, jnp.where(is_tgt, tgt_part, PAD)))
    return {"tokens": tokens, LOSS_MASK: is_tgt.astype(jnp.float32)}


def _seq2seq_encdec(src, tgt, valid, symbols, key, cfg):
    sep = jnp.full((src.shape[0], 1), SEP, src.dtype)
    mask = jnp.concatenate([jnp.zeros_like(sep, jnp.float32), valid.astype(jnp.float32)], axis=1)
    return {"src": src, "tgt": jnp.concatenate([sep, tgt], axis=1), LOSS_MASK: mask}


def _seq2seq_encoder(src, tgt, valid, symbols, key, cfg):
    return {"tokens": src, "targets": tgt, LOSS_MASK: valid.astype(jnp.float32)}


def _lm_decoder(window, symbols, key, cfg):
    return {"tokens": window}


def _lm_encdec(window, symbols, key, cfg):
    half = cfg.seq_len // 2
    return {"src": window[:, :half], "tgt": window[:, half - 1 :]}


def _lm_encoder(window, symbols, key, cfg):
    masked = jax.random.bernoulli(key, cfg.mlm_rate, window.shape)
    return {"tokens": jnp.where(masked, symbols, window), "targets": window, LOSS_MASK: masked.astype(jnp.float32)}


LAYOUTS: dict[tuple[str, str], Callable[..., dict]] = {
    ("seq2seq", "decoder"): _seq2seq_decoder,
    ("seq2seq", "encdec"): _seq2seq_encdec,
    ("seq2seq", "encoder"): _seq2seq_encoder,
    ("lm", "decoder"): _lm_decoder,
    ("lm", "encdec"): _lm_encdec,
    ("lm", "encoder"): _lm_encoder,
}


def input_lengths(kind: str, arch: str, cfg: TaskConfig) -> dict[str, int]:
    """Sequence length of each model input of a layout (checked against the model's max_len)."""
    if kind == "seq2seq":
        return {
            "decoder": {"tokens": 2 * cfg.length + 1},
            "encdec": {"src": cfg.length, "tgt": cfg.length + 1},
            "encoder": {"tokens": cfg.length},
        }[arch]
    half = cfg.seq_len // 2
    return {
        "decoder": {"tokens": cfg.seq_len},
        "encdec": {"src": half, "tgt": cfg.seq_len - half + 1},
        "encoder": {"tokens": cfg.seq_len},
    }[arch]


def special_ids(kind: str, arch: str) -> int:
    """Ids a layout needs beyond the content symbols (padding + separator, or the mask token)."""
    return 2 if kind == "seq2seq" else int(arch == "encoder")


# ---------------------------------------------------------------------------------------------
# Prepared data.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskData:
    """A task made concrete for one model: its static shape (hashable) plus device arrays.

    `batch(arrays, key, split)` is pure and jittable; pass `arrays` as an argument of the compiled
    function (not a closure constant) so a corpus is not baked into the program.
    """

    cfg: TaskConfig
    model: ModelConfig
    symbols: int
    arrays: Arrays = field(compare=False, hash=False, repr=False)
    info: dict = field(compare=False, hash=False)
    fingerprint: str = ""

    @property
    def task(self) -> Task:
        return TASKS[self.cfg.name]

    def batch(self, arrays: Arrays, key: jax.Array, split: str = "train") -> dict[str, jax.Array]:
        """One batch of `cfg.batch_size` sequences in the layout of the model's arch."""
        # Non-partitionable threefry (as models.init_state): the same generator, with kernels that XLA
        # CPU compiles faster; batches are per seed, so nothing is lost under a sharded seed axis.
        with jax.threefry_partitionable(False):
            k_seq, k_layout = jax.random.split(key)
            out = self.task.sample(self.cfg, self.symbols, arrays, k_seq, self.cfg.batch_size, split)
            layout = LAYOUTS[(self.task.kind, self.model.arch)]
            args = out if isinstance(out, tuple) else (out,)
            batch = layout(*args, self.symbols, k_layout, self.cfg)
        return {k: v.astype(jnp.int32) if k != LOSS_MASK else v for k, v in batch.items()}


def _markov_matrix(cfg: TaskConfig, symbols: int) -> np.ndarray:
    """P = softmax(sharpness·N(0, 1)) row-wise, from the task's data seed (float64 on the host)."""
    logits = cfg.markov_sharpness * np.random.default_rng(cfg.data_seed).standard_normal((symbols, symbols))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _markov_info(p: np.ndarray, cfg: TaskConfig, arch: str) -> dict[str, float]:
    """Entropy rate Σ_i π_i H(P_i) (stationary π) and the exact next-token loss floor of the layout.

    The floor averages H(x_t | x_{t−1}) over the predicted positions t, with x_0 uniform, so it also
    counts the first steps before the chain mixes.
    """
    row_entropy = -(p * np.log(p)).sum(axis=1)
    pi = np.full(len(p), 1.0 / len(p))
    marginals = [pi]
    for _ in range(cfg.seq_len - 1):
        marginals.append(marginals[-1] @ p)
    stationary = marginals[-1]
    for _ in range(1000):
        stationary = stationary @ p
    per_position = np.array([m @ row_entropy for m in marginals])  # H(x_{t+1} | x_t)
    predicted = {"decoder": range(0, cfg.seq_len - 1), "encdec": range(cfg.seq_len // 2 - 1, cfg.seq_len - 1)}
    floor = float(per_position[list(predicted[arch])].mean()) if arch in predicted else float("nan")
    return {"entropy_rate": float(stationary @ row_entropy), "loss_floor": floor}


def _noise_entropy(noise: float, symbols: int) -> float:
    """Entropy (nats) of a target symbol under label noise ε: 1−ε+ε/S on the true one, ε/S elsewhere."""
    if noise == 0:
        return 0.0
    hit, miss = 1 - noise + noise / symbols, noise / symbols
    return float(-hit * np.log(hit) - (symbols - 1) * miss * np.log(miss))


def prepare(cfg: TaskConfig, model: ModelConfig) -> TaskData:
    """Check that the task fits the model and build its data (reads the corpus); no compute on devices.

    Raises ValueError when the model's vocabulary or max_len is too small for the task, or the corpus
    is unreadable, empty, not UTF-8, or shorter than the windows and batches need.
    """
    task = TASKS[cfg.name]
    specials = special_ids(task.kind, model.arch)
    arrays: Arrays = {}
    fingerprint = ""
    if cfg.name == "charlm":
        corpus = load_corpus(cfg.corpus, cfg.val_fraction)
        symbols = len(corpus.alphabet)
        for split, ids in (("train", corpus.train), ("val", corpus.val)):
            windows = len(ids) - cfg.seq_len + 1
            if windows < 1:
                raise ValueError(
                    f"seq_len={cfg.seq_len} is longer than the corpus' {split} split ({len(ids)} characters); "
                    f"use a shorter seq_len or a larger corpus"
                )
            if cfg.batch_size > windows:
                raise ValueError(
                    f"batch_size={cfg.batch_size} exceeds the {windows} distinct windows of the corpus' {split} split"
                )
            arrays[split] = jnp.asarray(ids)
        entropy = corpus.unigram_entropy
        info = {
            "corpus": corpus.source,
            "characters": len(corpus.train) + len(corpus.val),
            "symbols": symbols,
            "unigram_entropy": entropy,
            "unigram_entropy_bits": float(entropy / np.log(2)),
        }
        fingerprint = corpus.sha256
    else:
        symbols = cfg.vocab if cfg.vocab is not None else model.vocab - specials
        if symbols < 2:
            raise ValueError(f"model vocab={model.vocab} leaves {symbols} symbol(s) for task {cfg.name!r}; need >= 2")
        info = {"symbols": symbols}
        if cfg.name == "markov":
            p = _markov_matrix(cfg, symbols)
            arrays["log_p"] = jnp.asarray(np.log(p), jnp.float32)
            info.update(_markov_info(p, cfg, model.arch))
        else:
            info["loss_floor"] = _noise_entropy(cfg.noise, symbols)
    if symbols + specials > model.vocab:
        raise ValueError(
            f"task {cfg.name!r} needs {symbols + specials} token ids ({symbols} symbols + {specials} special) "
            f"but the model's vocab is {model.vocab}; set the model's vocab to at least {symbols + specials}"
        )
    for name, length in input_lengths(task.kind, model.arch, cfg).items():
        if length > model.max_len:
            raise ValueError(
                f"task {cfg.name!r} gives {name} sequences of length {length} > the model's max_len={model.max_len}"
            )
    if task.kind == "lm" and model.arch == "encdec" and cfg.seq_len < 4:
        raise ValueError(f"seq_len={cfg.seq_len} is too short to split into source and target; use >= 4")
    return TaskData(cfg=cfg, model=model, symbols=symbols, arrays=arrays, info=info, fingerprint=fingerprint)
