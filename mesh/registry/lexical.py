"""LexicalIndex: BM25 over words, whole names and CJK character bigrams, updated one document at a time.

Why not a library index: ``bm25s`` (and the like) build one static sparse matrix, so admitting or removing
one agent means rebuilding the whole index (seconds at 100k tools). Discovery changes a few tools at a
time, so this keeps its own inverted index: a posting list per term (two growable ``array`` buffers
that numpy reads in place), a document's terms kept as two small arrays for its removal, and BM25
computed at query time from the live counts (``N``, document frequencies, average length). A query
scores every posting of its terms with one ``np.bincount``: a few tenths of a millisecond at 100k tools.

A term's BM25 contributions (one per posting) depend only on the live counts, so they are computed on
the first query that uses the term and kept until the index next changes (any add or remove clears
them): a registry is read far more often than it admits tools, and queries reuse their words. Kept,
they take at most as much memory as the postings themselves. ``search_many`` ranks several queries
(discovery's needs) with the filters applied once.

Removing a document marks its slot dead and takes it out of the counts at once; its stale postings are
skipped by the ``alive`` mask and dropped when a quarter of the slots are dead (a compaction, like
``VectorIndex``'s), so updates never rebuild the index.

Tokens (``terms``): lower-cased words, split at snake_case, kebab-case and punctuation, a camelCase word
both whole and split (``YouTube`` gives youtube, tube; ``getPetById`` getpetbyid, get, pet, id), English
stop words dropped, stemmed with the Snowball stemmer (PyStemmer), so "searching passages" meets
``search_passages``. Identifiers (tool and agent names) are also kept whole (``context7-mcp``,
``resolve-library-id``), so a query naming a product or a tool matches its name exactly. Runs of
Chinese, Japanese or Korean characters, written without spaces, become overlapping character bigrams
(single characters alone), the usual way to search CJK text without a dictionary.

Fields weigh by repetition (a light BM25F): a document is a bag ``{term: weight}`` built by ``document``
from ``(text, weight)`` pairs, and a term's frequency is the sum of its weights.
"""

from __future__ import annotations

import math
import re
import threading
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np
import Stemmer

K1 = 1.2
B = 0.75

_local = threading.local()  # a PyStemmer stemmer must not be shared between threads
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_PIECES = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+")
_IS_CJK = re.compile(rf"[{_CJK}]")
_IDENTIFIER = re.compile(r"[\w.\-/:]+")
_STOP_WORDS = (
    "a about after all also am an and any are as at be been before being but by can could did do does doing "
    "for from had has have having he her here hers him his how i if in into is it its itself just me more "
    "most my no nor not of off on once only or other our ours out over own please same she should so some "
    "such than that the their theirs them then there these they this those through to too under until up "
    "us very want was we were what when where which while who whom why will with would you your yours"
)
STOP_WORDS = frozenset(_STOP_WORDS.split())


def _stem(words: list[str]) -> list[str]:
    stemmer = getattr(_local, "stemmer", None)
    if stemmer is None:
        stemmer = _local.stemmer = Stemmer.Stemmer("english")
    return stemmer.stemWords(words)


def _cjk_terms(run: str) -> list[str]:
    return [run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)]


def terms(text: str) -> list[str]:
    """The search terms of a free text (a description, or a query), in order, repeats kept."""
    out: list[str] = []
    words: list[str] = []
    for piece in _PIECES.findall(text):
        if _IS_CJK.match(piece):
            out.extend(_cjk_terms(piece))
            continue
        parts = _CAMEL.sub(" ", piece).split()
        for word in [piece] if len(parts) == 1 else [piece, *parts]:  # "YouTube": youtube, you, tube
            if word.lower() not in STOP_WORDS:
                words.append(word.lower())
    return out + _stem(words)


def name_terms(name: str) -> list[str]:
    """An identifier's terms: its words (as ``terms``) plus the whole name, so ``context7-mcp`` also
    matches the query word "context7-mcp" as one term."""
    whole = [token.lower() for token in _IDENTIFIER.findall(name) if not _IS_CJK.search(token)]
    return terms(name) + [token for token in whole if token not in STOP_WORDS]


def document(fields: Iterable[tuple[Iterable[str], float]]) -> dict[str, float]:
    """A bag of weighted terms from ``(terms, weight)`` pairs: a term's weight sums over its occurrences."""
    bag: Counter[str] = Counter()
    for field_terms, weight in fields:
        for term in field_terms:
            bag[term] += weight
    return dict(bag)


class _Growable:
    """A numpy vector that grows by doubling, so adding one slot is O(1) amortized."""

    def __init__(self, dtype: type) -> None:
        self.data = np.zeros(1024, dtype=dtype)

    def ensure(self, size: int) -> None:
        if size > len(self.data):
            bigger = np.zeros(max(size, 2 * len(self.data)), dtype=self.data.dtype)
            bigger[: len(self.data)] = self.data
            self.data = bigger


class LexicalIndex:
    """BM25 search over documents keyed by the caller's integer ids, each in one integer ``group``.

    ``search(query, k, group=g)`` keeps only documents of group ``g`` (discovery uses 1 for read-only
    tools, 0 for the others) and ``ids=`` only those ids: filters are exact, never a post-filter.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._vocabulary: dict[str, int] = {}
        self._postings: list[tuple[array, array]] = []  # term id -> (slots int32, weights float32)
        self._df: list[int] = []  # term id -> live documents that contain it
        self._slot_of: dict[int, int] = {}  # caller id -> its live slot
        self._id_of: list[int] = []  # slot -> caller id
        self._doc_terms: list[tuple[np.ndarray, np.ndarray] | None] = []  # slot -> (term ids, weights)
        self._length = _Growable(np.float32)
        self._alive = _Growable(np.bool_)
        self._group = _Growable(np.int8)
        self._label = _Growable(np.int32)
        self._total_length = 0.0
        self._dead = 0
        self._impacts: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # term id -> (slots, BM25 parts)

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._slot_of

    def add(self, id_: int, bag: Mapping[str, float], group: int = 0, label: int = 0) -> None:
        """Index one document (an id already present is replaced); a search may keep one ``group`` and one
        ``label`` (discovery: read-only or not, and the project)."""
        with self._lock:
            self._remove(id_)
            self._impacts.clear()
            slot = len(self._id_of)
            term_ids = np.fromiter((self._term_id(term) for term in bag), dtype=np.int32, count=len(bag))
            weights = np.fromiter(bag.values(), dtype=np.float32, count=len(bag))
            for term_id, weight in zip(term_ids.tolist(), weights.tolist(), strict=True):
                slots, tfs = self._postings[term_id]
                slots.append(slot)
                tfs.append(weight)
                self._df[term_id] += 1
            self._id_of.append(id_)
            self._doc_terms.append((term_ids, weights))
            self._slot_of[id_] = slot
            for column in (self._length, self._alive, self._group, self._label):
                column.ensure(slot + 1)
            length = float(weights.sum())
            self._length.data[slot] = length
            self._alive.data[slot] = True
            self._group.data[slot] = group
            self._label.data[slot] = label
            self._total_length += length

    def remove(self, ids: Iterable[int]) -> None:
        """Forget these ids (unknown ones are ignored)."""
        with self._lock:
            for id_ in ids:
                self._remove(id_)
            if self._dead > 1000 and self._dead * 4 > len(self._id_of):
                self._compact()

    def search(
        self, query_terms: list[str], k: int, *, group: int | None = None, label: int | None = None,
        ids: Iterable[int] | None = None, floor: float = 0.0,
    ) -> list[tuple[int, float]]:
        """The ``k`` best ``(id, bm25)`` pairs with a positive score, best first; with a ``floor``, only
        those scoring at least ``floor`` times the best (cheaper than cutting a longer list afterwards)."""
        return self.search_many([query_terms], k, group=group, label=label, ids=ids, floor=floor)[0]

    def search_many(
        self, queries: list[list[str]], k: int, *, group: int | None = None, label: int | None = None,
        ids: Iterable[int] | None = None, floor: float = 0.0,
    ) -> list[list[tuple[int, float]]]:
        """``search`` for each query's terms, with the filters (``group``, ``label``, ``ids``) worked out once."""
        with self._lock:
            if not self._slot_of:
                return [[] for _ in queries]
            size = len(self._id_of)
            keep = self._alive.data[:size].copy()  # dead slots keep stale postings until compaction
            if group is not None:
                keep &= self._group.data[:size] == group
            if label is not None:
                keep &= self._label.data[:size] == label
            if ids is not None:
                allowed = np.zeros(size, dtype=np.bool_)
                allowed[[self._slot_of[i] for i in ids if i in self._slot_of]] = True
                keep &= allowed
            return [self._search(query_terms, k, keep, floor) for query_terms in queries]

    # -- internals (called with the lock held) --------------------------------------------------------

    def _search(self, query_terms: list[str], k: int, keep: np.ndarray, floor: float) -> list[tuple[int, float]]:
        """One query's ``k`` best among the slots ``keep`` marks, none under ``floor`` times the best; equal
        scores (common among short names) go by admission order, not by how a partial sort left them."""
        wanted = [self._vocabulary[t] for t in dict.fromkeys(query_terms) if t in self._vocabulary]
        parts = [self._impact(term_id) for term_id in wanted if self._df[term_id]]
        if not parts:
            return []
        slots = np.concatenate([part[0] for part in parts]) if len(parts) > 1 else parts[0][0]
        contributions = np.concatenate([part[1] for part in parts]) if len(parts) > 1 else parts[0][1]
        scores = np.bincount(slots, contributions, minlength=len(keep))
        scores *= keep
        best = scores.max()
        if best <= 0:
            return []
        candidates = np.flatnonzero(scores >= best * floor if floor > 0 else scores > 0)
        if len(candidates) > k:  # keep them in slot order, so equal scores go by admission order
            candidates = np.sort(candidates[np.argpartition(-scores[candidates], k - 1)[:k]])
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        id_of = self._id_of
        return [(id_of[slot], score) for slot, score in zip(order.tolist(), scores[order].tolist(), strict=True)]

    def _impact(self, term_id: int) -> tuple[np.ndarray, np.ndarray]:
        """A term's posting slots and each one's BM25 contribution, from the live counts (cached until
        the index changes; see the module docstring)."""
        cached = self._impacts.get(term_id)
        if cached is not None:
            return cached
        live = len(self._slot_of)
        df = self._df[term_id]
        idf = math.log(1.0 + (live - df + 0.5) / (df + 0.5))
        slots_buffer, tfs_buffer = self._postings[term_id]
        slots = np.frombuffer(slots_buffer, dtype=np.int32).copy()
        tfs = np.frombuffer(tfs_buffer, dtype=np.float32)
        norm = K1 * (1.0 - B + B * self._length.data[slots] / (self._total_length / live))
        contributions = idf * tfs * (K1 + 1.0) / (tfs + norm)
        del tfs  # release the buffer export before anyone appends again
        self._impacts[term_id] = (slots, contributions)
        return slots, contributions

    def _term_id(self, term: str) -> int:
        term_id = self._vocabulary.get(term)
        if term_id is None:
            term_id = self._vocabulary[term] = len(self._postings)
            self._postings.append((array("i"), array("f")))
            self._df.append(0)
        return term_id

    def _remove(self, id_: int) -> None:
        slot = self._slot_of.pop(id_, None)
        if slot is None:
            return
        self._impacts.clear()
        term_ids, _ = self._doc_terms[slot]
        for term_id in term_ids.tolist():
            self._df[term_id] -= 1
        self._doc_terms[slot] = None
        self._alive.data[slot] = False
        self._total_length -= float(self._length.data[slot])
        self._dead += 1

    def _compact(self) -> None:
        """Rebuild the posting lists from the live documents, renumbering their slots from 0."""
        self._impacts.clear()
        live = [(self._id_of[slot], slot) for slot in sorted(self._slot_of.values())]
        documents = [(id_, self._doc_terms[slot], self._group.data[slot], self._label.data[slot]) for id_, slot in live]
        self._postings = [(array("i"), array("f")) for _ in self._postings]
        self._id_of, self._doc_terms, self._slot_of = [], [], {}
        self._alive.data[:] = False
        for new, (id_, doc, group, label) in enumerate(documents):
            term_ids, weights = doc
            for term_id, weight in zip(term_ids.tolist(), weights.tolist(), strict=True):
                slots, tfs = self._postings[term_id]
                slots.append(new)
                tfs.append(weight)
            self._id_of.append(id_)
            self._doc_terms.append(doc)
            self._slot_of[id_] = new
            self._length.data[new] = float(weights.sum())
            self._alive.data[new] = True
            self._group.data[new] = group
            self._label.data[new] = label
        self._dead = 0
