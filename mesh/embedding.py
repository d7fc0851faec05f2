"""Sentence embeddings with WordLlama: small, numpy-only, and fully offline.

WordLlama's 256-d weights and its tokenizer ship inside its wheel. ``WordLlama.load()`` would look for
them under ``~/.cache/wordllama`` and fall back to downloading from Hugging Face; here the package
folder itself is the cache and downloads are disabled, so loading never touches the network (a missing
file raises ``FileNotFoundError`` instead). The model is loaded once per process, on first use.
"""

from __future__ import annotations

import threading
from pathlib import Path

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
