"""Text statistics any agent of this mesh can mount with ``agent.mount("textstats")``."""

from __future__ import annotations

import re
from collections import Counter

from pydantic import BaseModel, Field

from mesh import ToolKit

kit = ToolKit("textstats")

WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
STOPWORDS = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "but", "by", "can", "each", "every", "for", "from", "has",
        "have", "how", "in", "is", "it", "its", "not", "of", "on", "one", "or", "that", "the", "their", "them",
        "then", "there", "these", "they", "this", "to", "was", "were", "what", "when", "where", "which", "who",
        "will", "with",
    }
)  # fmt: skip
WORDS_PER_MINUTE = 230


class TextStats(BaseModel):
    words: int = Field(description="Number of words.")
    sentences: int = Field(description="Number of sentences (at least 1 for non-empty text).")
    reading_minutes: float = Field(description=f"Reading time at {WORDS_PER_MINUTE} words a minute.")


@kit.tool(read_only=True, idempotent=True, open_world=False)
def text_stats(text: str) -> TextStats:
    """Count words and sentences in a text and estimate its reading time."""
    words = len(text.split())
    sentences = len(SENTENCE_END.findall(text)) or (1 if text.strip() else 0)
    return TextStats(words=words, sentences=sentences, reading_minutes=round(words / WORDS_PER_MINUTE, 2))


@kit.tool(read_only=True, idempotent=True, open_world=False)
def keywords(text: str, k: int = Field(default=5, ge=1, le=50)) -> list[str]:
    """The k most frequent content words of a text (stop words left out), most frequent first."""
    counts = Counter(w.lower() for w in WORD.findall(text) if w.lower() not in STOPWORDS)
    return [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:k]]
