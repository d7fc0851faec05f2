"""VectorIndex: exact and HNSW search agree, ids survive every path, removals are honoured."""

from __future__ import annotations

import numpy as np
import pytest

from mesh.vectors import VectorIndex

DIM = 64


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def data() -> tuple[list[int], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    ids = [int(i) for i in rng.choice(10**12, size=2000, replace=False)]  # sparse, large: not positions
    vectors = unit_rows(rng, 2000)
    queries = vectors[:100] + 0.05 * rng.standard_normal((100, DIM)).astype(np.float32)
    return ids, vectors, queries


def test_flat_and_hnsw_agree_on_top1_and_keep_ids(data):
    ids, vectors, queries = data
    flat = VectorIndex(DIM)
    hnsw = VectorIndex(DIM, exact_below=500)
    flat.add(ids, vectors)
    hnsw.add(ids[:300], vectors[:300])  # still flat
    assert hnsw.is_exact
    hnsw.add(ids[300:], vectors[300:])  # crosses the threshold: rebuilt as HNSW
    assert flat.is_exact and not hnsw.is_exact
    assert len(flat) == len(hnsw) == 2000

    for i, query in enumerate(queries):
        exact, approximate = flat.search(query, 5), hnsw.search(query, 5)
        assert exact[0][0] == approximate[0][0] == ids[i]
        assert exact[0][1] == pytest.approx(approximate[0][1], abs=1e-5)
        assert [score for _, score in exact] == sorted((score for _, score in exact), reverse=True)


@pytest.mark.parametrize("exact_below", [20_000, 500])
def test_several_queries_in_one_call_answer_as_each_alone(data, exact_below):
    ids, vectors, queries = data
    index = VectorIndex(DIM, exact_below=exact_below)
    index.add(ids, vectors)
    index.remove(ids[:10])  # dead positions are skipped in a batch too
    together = index.search_many(queries[:20], 7)
    assert together == [index.search(query, 7) for query in queries[:20]]
    assert all(ids[i] not in {hit for hit, _ in together[i]} for i in range(10))
    assert index.search_many(queries[:0], 3) == []


@pytest.mark.parametrize("exact_below", [20_000, 500])
def test_remove_and_replace(data, exact_below):
    ids, vectors, _ = data
    index = VectorIndex(DIM, exact_below=exact_below)
    index.add(ids, vectors)
    assert index.remove([ids[0], ids[1], 12345]) == 2  # unknown ids are ignored
    assert len(index) == 1998 and ids[0] not in index
    assert all(hit != ids[0] for hit, _ in index.search(vectors[0], 10))

    index.add([ids[2]], vectors[3])  # replacing an id moves it to its new vector
    assert len(index) == 1998
    assert {hit for hit, _ in index.search(vectors[3], 2)} == {ids[2], ids[3]}

    index.remove(ids[1000:])  # more than a quarter dead: compacted, answers unchanged
    assert len(index) == 998
    assert index.search(vectors[500], 1)[0][0] == ids[500]


def test_scores_are_cosine_of_normalized_input():
    index = VectorIndex(3)
    index.add([10, 20], np.array([[3.0, 0, 0], [1.0, 1.0, 0]]))
    hits = index.search(np.array([2.0, 0, 0]), 5)
    assert [hit for hit, _ in hits] == [10, 20]  # k larger than the index: everything, best first
    assert hits[0][1] == pytest.approx(1.0) and hits[1][1] == pytest.approx(2**-0.5)
    assert index.search(np.array([[0.0, 1.0, 0]]), 1)[0][0] == 20  # a (1, d) matrix is one query


def test_bad_input_is_refused():
    index = VectorIndex(4)
    assert index.search(np.ones(4), 3) == []  # empty index
    with pytest.raises(ValueError, match="dimension 4"):
        index.add([1], np.ones((1, 5)))
    with pytest.raises(ValueError, match="2 ids for 1 vectors"):
        index.add([1, 2], np.ones((1, 4)))
    with pytest.raises(ValueError, match="unique"):
        index.add([1, 1], np.ones((2, 4)))
    with pytest.raises(ValueError, match="one query"):
        index.search(np.ones((2, 4)), 1)


@pytest.mark.parametrize("exact_below", [20_000, 500])
def test_a_flagged_search_keeps_only_live_vectors_with_that_flag(data, exact_below):
    ids, vectors, queries = data
    index = VectorIndex(DIM, exact_below=exact_below)
    flagged = set(ids[::3])
    index.add(ids[::3], vectors[::3], flag=True)
    index.add([i for i in ids if i not in flagged], np.delete(vectors, np.s_[::3], axis=0))
    exact = VectorIndex(DIM)  # the flagged ones alone, searched exhaustively: what a filtered search should find
    exact.add(ids[::3], vectors[::3])

    agree = 0
    for query in queries:
        only = index.search(query, 5, flagged=True)
        others = index.search(query, 5, flagged=False)
        assert only and {hit for hit, _ in only} <= flagged
        assert others and not {hit for hit, _ in others} & flagged
        agree += only[0][0] == exact.search(query, 1)[0][0]
    assert agree >= 95  # exact for the flat index; HNSW may miss a rare one

    index.remove([ids[0]])  # removed: gone from the filtered search too
    assert ids[0] not in {hit for hit, _ in index.search(vectors[0], 10, flagged=True)}
    index.add([ids[3]], vectors[3], flag=False)  # re-added without the flag: now only in the unflagged search
    assert ids[3] not in {hit for hit, _ in index.search(vectors[3], 10, flagged=True)}
    assert index.search(vectors[3], 1, flagged=False)[0][0] == ids[3]

    index.remove(ids[1000:])  # compacted: the flags move with their vectors
    assert len(index) == 999
    assert all(hit in flagged for hit, _ in index.search(queries[3], 20, flagged=True))
    assert index.search(vectors[6], 1, flagged=True)[0][0] == ids[6]
