"""Counting tokens without downloading anything: o200k_base from a file already installed, else an estimate.

tiktoken's wheel ships no encodings (it downloads them on first use). litellm, which DSPy installs,
ships tiktoken's cache files for cl100k_base and o200k_base inside its own wheel; the counter reads
o200k_base (GPT-4o's encoding) from there, checks the file against tiktoken's published SHA-256, and
builds the encoding itself, so nothing is fetched or written. Other models tokenize differently
(Claude's and Llama's tokenizers count roughly 5–20 % more on English prose); give the budgeter a
counter of their own, or keep a margin. Without the file the counter falls back to
``EstimatedCounter``, which says so in its ``name`` and overestimates on purpose (UTF-8 bytes / 3;
o200k_base averages about 4 bytes a token on English and JSON), so a budget still holds.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import math
import os
import threading
from pathlib import Path
from typing import Protocol

O200K_FILE = "fb374d419588a4632f3f557e76b4b70aebbca790"
"""tiktoken's cache name for o200k_base: sha1 of its download URL."""
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
O200K_PATTERN = "|".join(  # from tiktoken_ext.openai_public.o200k_base
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
O200K_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...


class TiktokenCounter:
    """Exact counts for one tiktoken encoding; special-token text is counted as plain text."""

    def __init__(self, encoding) -> None:
        self._encoding = encoding
        self.name = encoding.name

    def count(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text))


class EstimatedCounter:
    """An upper-bound estimate for when no tokenizer file is installed: UTF-8 bytes / ``bytes_per_token``."""

    def __init__(self, bytes_per_token: float = 3.0) -> None:
        self.bytes_per_token = bytes_per_token
        self.name = f"estimate (utf-8 bytes / {bytes_per_token:g})"

    def count(self, text: str) -> int:
        return math.ceil(len(text.encode()) / self.bytes_per_token)


def o200k_file() -> Path | None:
    """The installed o200k_base file: in ``TIKTOKEN_CACHE_DIR`` if set, else in litellm's wheel."""
    folders = [os.environ.get("TIKTOKEN_CACHE_DIR")]
    spec = importlib.util.find_spec("litellm")  # finds the package without importing it (≈3 s)
    if spec and spec.submodule_search_locations:
        folders += [str(Path(p) / "litellm_core_utils" / "tokenizers") for p in spec.submodule_search_locations]
    for folder in filter(None, folders):
        path = Path(folder) / O200K_FILE
        if path.is_file():
            return path
    return None


def load_o200k(path: Path) -> TiktokenCounter:
    import tiktoken

    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != O200K_SHA256:
        raise ValueError(f"{path} is not tiktoken's o200k_base (SHA-256 mismatch)")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    encoding = tiktoken.Encoding(
        name="o200k_base", pat_str=O200K_PATTERN, mergeable_ranks=ranks, special_tokens=O200K_SPECIAL
    )
    return TiktokenCounter(encoding)


_lock = threading.Lock()
_default: TokenCounter | None = None


def default_counter() -> TokenCounter:
    """o200k_base when its file is installed (it is wherever DSPy is), else ``EstimatedCounter``; loaded once."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                path = o200k_file()
                try:
                    _default = load_o200k(path) if path else EstimatedCounter()
                except (ValueError, ImportError):
                    _default = EstimatedCounter()
    return _default


def count_tokens(text: str) -> int:
    return default_counter().count(text)
