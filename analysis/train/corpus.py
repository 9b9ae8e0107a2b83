"""The character-level corpus: read, check, encode, split, and its unigram entropy.

The default corpus ships with every Python installation: the standard library's `pydoc_data.topics`
(the reference text behind `help()`, ≈ 490 K characters of English, ≈ 100 distinct characters), so a
char-LM run needs no download. `TaskConfig(corpus=PATH)` reads a user's UTF-8 file instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_CORPUS = "pydoc_data.topics"


@dataclass(frozen=True)
class Corpus:
    """A corpus encoded as character ids (ids index `alphabet`, sorted by code point)."""

    source: str  # the file path, or "pydoc_data.topics"
    alphabet: str
    train: np.ndarray  # (N_train,) int32
    val: np.ndarray  # (N_val,) int32
    sha256: str  # of the UTF-8 text: names the data in the run's hash

    @property
    def unigram_entropy(self) -> float:
        """H = −Σ_c p_c ln p_c of the training split (nats per character): the loss of a model that
        knows only character frequencies; a char-LM curve well below it has learned context."""
        counts = np.bincount(self.train, minlength=len(self.alphabet)).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())


def read_text(path: str | None) -> tuple[str, str]:
    """(text, source) of the corpus; ValueError for an unreadable, empty or non-UTF-8 file."""
    if path is None:
        # imported here: most runs never read its 0.8 MB of text
        from pydoc_data.topics import topics

        return "\n".join(topics[k] for k in sorted(topics)), DEFAULT_CORPUS
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"corpus {path!r} cannot be read: {err.strerror or err}") from None
    if not raw:
        raise ValueError(f"corpus {path!r} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus {path!r} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    if not text.strip():
        raise ValueError(f"corpus {path!r} holds only whitespace")
    return text, str(path)


def load_corpus(path: str | None, val_fraction: float) -> Corpus:
    """Encode the corpus character by character and split it: the last `val_fraction` is validation.

    A contiguous split (not random windows) keeps validation text unseen in training, whatever the
    window length.
    """
    text, source = read_text(path)
    alphabet = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(alphabet)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int32, count=len(text))
    cut = len(ids) - int(round(val_fraction * len(ids)))
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Corpus(source=source, alphabet=alphabet, train=ids[:cut], val=ids[cut:], sha256=sha)
