"""VectorIndex: cosine-similarity search over unit vectors with Faiss, keyed by the caller's integer ids.

Small indexes are searched exactly (flat inner product); once an index holds ``exact_below`` vectors it
is rebuilt as HNSW (M=32, efSearch=64, inner product), which stays well under a millisecond a query at
100k vectors where a flat scan takes several. Faiss labels vectors by insertion position; this class
maps positions to the caller's ids, so a removal only marks a position dead (HNSW cannot delete) and
searches skip dead positions with an ``IDSelector``. When dead positions pile up the index is compacted.

Each vector may carry a boolean flag and an integer label (discovery: the tool is annotated
``readOnlyHint``; the project it belongs to), and a search may keep only the vectors with a given flag
(``flagged=``) and label (``label=``): a Faiss ``IDSelectorBitmap`` over positions, so one graph answers
the filtered and the unfiltered search. That is cheaper than one graph
per flag, which an unfiltered search had to walk twice: at 100k vectors of 512 dimensions, 3 queries at
depth 50 took 0.6 ms of CPU on one graph against 1.8 ms on two halves. A filtered walk passes over the
vectors it may not return, so it searches wider (``ef_filtered``, twice ``ef_search``, for half kept,
and wider for less), which keeps its recall near the half graph's (0.90 against 0.92 on that set, for
1.3 ms against 0.8 ms). Under a fifth kept, recall falls off (0.76 at a fifth, 0.44 at a twentieth, ef
128): search a small subset exactly instead.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import faiss
import numpy as np

faiss.omp_set_num_threads(1)  # one query at a time: a second OpenMP thread only adds overhead
MAX_EF_FILTERED = 512
"""The widest a filtered HNSW search gets: below a fifth or so kept, exact search over the kept vectors
serves better (discovery scans a small project's vectors itself)."""
PARALLEL_BUILD_ROWS = 20_000
"""Bulk HNSW inserts at least this large use every core (smaller ones lose more to OpenMP than they gain)."""


@contextmanager
def _all_cores():
    """Bulk HNSW construction is the one place where more threads pay off."""
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(1)


class VectorIndex:
    """Nearest neighbours by cosine similarity; ``search`` returns ``(id, score)`` pairs, best first."""

    def __init__(
        self,
        dimension: int,
        *,
        exact_below: int = 20_000,
        m: int = 32,
        ef_search: int = 64,
        ef_construction: int = 40,
        ef_filtered: int | None = None,
    ) -> None:
        self.dimension = dimension
        self.exact_below = exact_below
        self.m = m
        self.ef_search = ef_search
        self.ef_construction = ef_construction
        self.ef_filtered = ef_filtered or 2 * ef_search
        self._lock = threading.Lock()
        self._ids: list[int] = []  # faiss position -> caller id
        self._positions: dict[int, int] = {}  # caller id -> live faiss position
        self._dead: set[int] = set()
        self._flags = np.zeros(0, dtype=bool)  # faiss position -> its vector's flag
        self._labels = np.zeros(0, dtype=np.int32)  # faiss position -> its vector's label
        self._params: faiss.SearchParameters | None = None
        # (flag, label) -> (search parameters keeping only live vectors with them, the bitmap they point
        # into); made on the first such search after a change
        self._filters: dict[tuple[bool | None, int | None], tuple[faiss.SearchParameters, np.ndarray]] = {}
        self._index = self._new_index(hnsw=False)

    @property
    def is_exact(self) -> bool:
        """True while the index is a flat (exhaustive) one."""
        return not isinstance(self._index, faiss.IndexHNSWFlat)

    def __len__(self) -> int:
        return len(self._positions)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._positions

    def add(self, ids: Sequence[int], vectors: np.ndarray, flag: bool = False, label: int = 0) -> None:
        """Add one vector per id, each with ``flag`` and ``label``; an id already present is replaced (its
        flag and label too). Rows are L2-normalized here."""
        matrix = self._as_matrix(vectors)
        ids = [int(i) for i in ids]
        if len(ids) != matrix.shape[0]:
            raise ValueError(f"{len(ids)} ids for {matrix.shape[0]} vectors")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique within one add()")
        if not ids:
            return
        faiss.normalize_L2(matrix)
        with self._lock:
            for id_ in ids:
                if id_ in self._positions:
                    self._dead.add(self._positions.pop(id_))
            start = len(self._ids)
            self._ids.extend(ids)
            self._positions.update(zip(ids, range(start, start + len(ids)), strict=True))
            self._flags = np.concatenate([self._flags, np.full(len(ids), bool(flag))])
            self._labels = np.concatenate([self._labels, np.full(len(ids), label, dtype=np.int32)])
            self._filters = {}
            if self.is_exact and len(self._positions) >= self.exact_below:
                self._rebuild(extra=matrix)
            else:
                self._add_to_index(matrix)
                self._after_removals()

    def remove(self, ids: Iterable[int]) -> int:
        """Forget these ids (unknown ones are ignored); returns how many were removed."""
        removed = 0
        with self._lock:
            for id_ in ids:
                position = self._positions.pop(int(id_), None)
                if position is not None:
                    self._dead.add(position)
                    removed += 1
            if removed:
                self._filters = {}
                self._after_removals()
        return removed

    def search(self, query: np.ndarray, k: int, flagged: bool | None = None,
               label: int | None = None) -> list[tuple[int, float]]:
        """The ``k`` nearest ids to one query vector (shape ``(d,)`` or ``(1, d)``), best first; with
        ``flagged`` or ``label``, only among the vectors added with that flag or label."""
        matrix = self._as_matrix(query)
        if matrix.shape[0] != 1:
            raise ValueError(f"search() takes one query vector, got {matrix.shape[0]}")
        return self.search_many(matrix, k, flagged, label)[0]

    def search_many(self, queries: np.ndarray, k: int, flagged: bool | None = None,
                    label: int | None = None) -> list[list[tuple[int, float]]]:
        """``search`` for each row of ``queries`` (shape ``(n, d)``) in one Faiss call, which saves the
        per-call overhead when one request asks several questions (discovery's needs)."""
        matrix = self._as_matrix(queries)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        faiss.normalize_L2(matrix)
        with self._lock:
            k = min(k, len(self._positions))
            if k == 0 or not len(matrix):
                return [[] for _ in range(len(matrix))]
            unfiltered = flagged is None and label is None
            params = self._params if unfiltered else self._filter(flagged, label)
            scores, positions = self._index.search(matrix, k, params=params)
            ids = self._ids
            return [
                [(ids[p], s) for s, p in zip(row_scores.tolist(), row_positions.tolist(), strict=True) if p >= 0]
                for row_scores, row_positions in zip(scores, positions, strict=True)
            ]

    # -- internals (called with the lock held) --------------------------------------------------------

    def _as_matrix(self, vectors: np.ndarray) -> np.ndarray:
        matrix = np.array(vectors, dtype=np.float32, ndmin=2, order="C", copy=True)
        if matrix.ndim != 2 or matrix.shape[1] != self.dimension:
            raise ValueError(f"expected vectors of dimension {self.dimension}, got shape {matrix.shape}")
        return matrix

    def _new_index(self, hnsw: bool) -> faiss.Index:
        if not hnsw:
            return faiss.IndexFlatIP(self.dimension)
        index = faiss.IndexHNSWFlat(self.dimension, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    def _add_to_index(self, matrix: np.ndarray) -> None:
        if not self.is_exact and matrix.shape[0] >= PARALLEL_BUILD_ROWS:
            with _all_cores():
                self._index.add(matrix)
        else:
            self._index.add(matrix)

    def _after_removals(self) -> None:
        """Compact once a quarter of the positions are dead; otherwise refresh the skip-list."""
        if self._dead and len(self._dead) * 4 > self._index.ntotal:
            self._rebuild()
            return
        self._params = self._search_params()

    def _search_params(self) -> faiss.SearchParameters | None:
        """Search parameters that skip dead positions (faiss keeps the selector alive for us)."""
        if self.is_exact:
            params = faiss.SearchParameters() if self._dead else None
        else:
            params = faiss.SearchParametersHNSW(efSearch=self.ef_search)
        if self._dead:
            dead = np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))
            params.sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
        return params

    def _filter(self, flag: bool | None, label: int | None) -> faiss.SearchParameters:
        """Search parameters that keep only live positions with this flag and label (None: any), cached
        until the next change."""
        key = (None if flag is None else bool(flag), label)
        if key not in self._filters:
            keep = np.ones(len(self._flags), dtype=bool) if flag is None else self._flags == bool(flag)
            if label is not None:
                keep &= self._labels == label
            if self._dead:
                keep[np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))] = False
            bitmap = np.packbits(keep, bitorder="little")  # bit i of byte i // 8, as IDSelectorBitmap reads it
            # The walk passes over what it may not return: the smaller the share kept, the wider it searches.
            kept = max(int(keep.sum()), 1)
            ef = min(max(self.ef_filtered, self.ef_search * len(self._positions) // kept), MAX_EF_FILTERED)
            params = faiss.SearchParameters() if self.is_exact else faiss.SearchParametersHNSW(efSearch=ef)
            params.sel = faiss.IDSelectorBitmap(len(keep), faiss.swig_ptr(bitmap))
            self._filters[key] = (params, bitmap)  # the selector points into the bitmap: keep both
        return self._filters[key][0]

    def _rebuild(self, extra: np.ndarray | None = None) -> None:
        """Rebuild from the live vectors (plus ``extra``, not yet indexed), flat or HNSW by size."""
        stored = self._index.reconstruct_n(0, self._index.ntotal) if self._index.ntotal else None
        parts = [p for p in (stored, extra) if p is not None]
        everything = np.vstack(parts) if parts else np.zeros((0, self.dimension), np.float32)
        live = sorted(self._positions.items(), key=lambda item: item[1])
        keep = np.fromiter((position for _, position in live), dtype=np.int64, count=len(live))
        self._ids = [id_ for id_, _ in live]
        self._positions = {id_: new for new, (id_, _) in enumerate(live)}
        self._flags = self._flags[keep]
        self._labels = self._labels[keep]
        self._filters = {}
        self._dead = set()
        self._index = self._new_index(hnsw=len(live) >= self.exact_below)
        self._add_to_index(np.ascontiguousarray(everything[keep]))
        self._params = self._search_params()
