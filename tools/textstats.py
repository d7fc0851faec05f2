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
    "a an and are as at be by for from has have in is it its of on or that the this to was were will with "
    "not but can each every one their them then there these they which who what when where how".split()
)
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
