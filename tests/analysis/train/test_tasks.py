"""Tasks and layouts against hand-written numpy restatements; the Markov chain and the corpus against
their statistics."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from analysis.train import TASKS, TaskConfig
from analysis.train.corpus import load_corpus
from analysis.train.tasks import FIRST_SYMBOL, PAD, SEP, _markov_matrix, prepare
from models import ModelConfig

SMALL = dict(layers=1, d_model=16, heads=2, d_ff=32, vocab=16, max_len=64)
ARCHS = ("decoder", "encdec", "encoder")
# Monte-Carlo tolerance: 4 standard errors of a frequency estimated from ~N draws.
MC_SIGMAS = 4.0


def _draw(task: TaskConfig, arch: str, seed: int = 0, split: str = "train"):
    data = prepare(task, ModelConfig(arch=arch, **SMALL))
    batch = jax.jit(lambda a, k: data.batch(a, k, split))(data.arrays, jax.random.key(seed))
    return data, {k: np.asarray(v) for k, v in batch.items()}


def _expected_target(name: str, src: np.ndarray) -> np.ndarray:
    return {"copy": src, "reverse": src[::-1], "sort": np.sort(src)}[name]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", ["copy", "reverse", "sort"])
def test_seq2seq_layouts(name, arch):
    M = 6
    task = TaskConfig(name=name, length=M, min_length=2, batch_size=32)
    data, batch = _draw(task, arch)
    src_of = {"decoder": lambda b: b["tokens"], "encdec": lambda b: b["src"], "encoder": lambda b: b["tokens"]}
    lengths = set()
    for i in range(task.batch_size):
        row = src_of[arch](batch)[i]
        n = int(np.argmax(row == PAD)) if arch != "decoder" and (row == PAD).any() else None
        if arch == "decoder":
            n = int(np.argmax(row == SEP))
        n = M if n is None else n
        lengths.add(n)
        src = row[:n]
        assert 2 <= n <= M and np.all((src >= FIRST_SYMBOL) & (src < FIRST_SYMBOL + data.symbols))
        tgt = _expected_target(name, src)
        if arch == "decoder":
            expected = np.concatenate([src, [SEP], tgt, np.full(M - n, PAD), np.full(M - n, PAD)])
            mask = np.concatenate([np.zeros(n + 1), np.ones(n), np.zeros(2 * (M - n))])
            np.testing.assert_array_equal(batch["tokens"][i], expected)
        elif arch == "encdec":
            np.testing.assert_array_equal(batch["src"][i], np.concatenate([src, np.full(M - n, PAD)]))
            np.testing.assert_array_equal(batch["tgt"][i], np.concatenate([[SEP], tgt, np.full(M - n, PAD)]))
            mask = np.concatenate([[0], np.ones(n), np.zeros(M - n)])
        else:
            np.testing.assert_array_equal(batch["targets"][i], np.concatenate([tgt, np.full(M - n, PAD)]))
            mask = np.concatenate([np.ones(n), np.zeros(M - n)])
        np.testing.assert_array_equal(batch["loss_mask"][i], mask)
    assert len(lengths) > 2, "lengths must vary between min_length and length"


def test_label_noise_rate_and_floor():
    task = TaskConfig(name="copy", length=8, noise=0.3, batch_size=256, vocab=10)
    data, batch = _draw(task, "encoder")
    changed = np.mean(batch["targets"] != batch["tokens"])
    p = 0.3 * (1 - 1 / 10)  # a replacement may draw the true symbol again
    n = batch["targets"].size
    assert abs(changed - p) < MC_SIGMAS * np.sqrt(p * (1 - p) / n)
    hit, miss = 1 - 0.3 + 0.03, 0.03
    assert data.info["loss_floor"] == pytest.approx(-hit * np.log(hit) - 9 * miss * np.log(miss))


def test_markov_chain_follows_its_transition_matrix():
    task = TaskConfig(name="markov", vocab=4, seq_len=64, batch_size=256, markov_sharpness=1.0)
    data, batch = _draw(task, "decoder")
    seqs = batch["tokens"]
    counts = np.zeros((4, 4))
    np.add.at(counts, (seqs[:, :-1].ravel(), seqs[:, 1:].ravel()), 1)
    p = _markov_matrix(task, 4)
    freq = counts / counts.sum(axis=1, keepdims=True)
    se = np.sqrt(p * (1 - p) / counts.sum(axis=1, keepdims=True))
    assert np.all(np.abs(freq - p) < MC_SIGMAS * se + 1e-12)
    # The entropy rate of the fixed chain, by hand: stationary π from an eigenvector of Pᵀ.
    w, v = np.linalg.eig(p.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    assert data.info["entropy_rate"] == pytest.approx(float(pi @ -(p * np.log(p)).sum(1)), rel=1e-6)
    assert 0 < data.info["loss_floor"] < np.log(4)


def test_markov_chain_is_fixed_by_data_seed_not_model_seed():
    a = TaskConfig(name="markov", vocab=8)
    assert np.array_equal(_markov_matrix(a, 8), _markov_matrix(a, 8))
    assert not np.array_equal(_markov_matrix(a, 8), _markov_matrix(TaskConfig(name="markov", vocab=8, data_seed=1), 8))


def test_encoder_lm_is_masked_lm():
    task = TaskConfig(name="markov", seq_len=32, batch_size=64, mlm_rate=0.25)
    data, batch = _draw(task, "encoder")
    masked = batch["loss_mask"].astype(bool)
    assert np.all(batch["tokens"][masked] == data.symbols)  # the mask id, past the content symbols
    np.testing.assert_array_equal(batch["tokens"][~masked], batch["targets"][~masked])
    n = masked.size
    assert abs(masked.mean() - 0.25) < MC_SIGMAS * np.sqrt(0.25 * 0.75 / n)


def test_encdec_lm_predicts_the_continuation():
    task = TaskConfig(name="markov", seq_len=10, batch_size=4)
    _, batch = _draw(task, "encdec")
    assert batch["src"].shape == (4, 5) and batch["tgt"].shape == (4, 6)
    np.testing.assert_array_equal(batch["tgt"][:, 0], batch["src"][:, -1])


def test_charlm_windows_are_corpus_text_and_splits_are_disjoint(tmp_path):
    text = "".join(chr(ord("a") + (i * 7) % 26) for i in range(2000))
    path = tmp_path / "c.txt"
    path.write_text(text)
    corpus = load_corpus(str(path), 0.25)
    assert len(corpus.train) == 1500 and len(corpus.val) == 500
    counts = np.bincount(corpus.train)
    p = counts[counts > 0] / counts.sum()
    assert corpus.unigram_entropy == pytest.approx(float(-(p * np.log(p)).sum()))
    task = TaskConfig(name="charlm", corpus=str(path), seq_len=16, batch_size=8, val_fraction=0.25)
    model = dict(SMALL, vocab=32)
    for split, part in (("train", text[:1500]), ("val", text[1500:])):
        data = prepare(task, ModelConfig(arch="decoder", **model))
        batch = jax.jit(lambda a, k: data.batch(a, k, split))(data.arrays, jax.random.key(1))
        for row in np.asarray(batch["tokens"]):
            assert "".join(corpus.alphabet[i] for i in row) in part


def test_default_corpus_ships_with_python():
    corpus = load_corpus(None, 0.1)
    assert corpus.source == "pydoc_data.topics"
    assert len(corpus.train) + len(corpus.val) > 100_000
    assert 2.0 < corpus.unigram_entropy < np.log(len(corpus.alphabet))


def test_registry_names_every_task_kind():
    assert set(TASKS) == {"copy", "reverse", "sort", "markov", "charlm"}
    assert {t.kind for t in TASKS.values()} == {"seq2seq", "lm"}
