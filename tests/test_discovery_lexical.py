"""The lexical ranker on its own: terms, BM25 ordering, exact filters, and updates one document at a time."""

from __future__ import annotations

import pytest

from mesh.registry import lexical
from mesh.registry.lexical import LexicalIndex, document, name_terms, terms


def bag(text: str, name: str = "") -> dict[str, float]:
    return document([(terms(text), 1.0), (name_terms(name), 3.0)])


def test_terms_split_stem_and_drop_stop_words():
    assert terms("Searching the passages") == ["search", "passag"]
    assert terms("getPetById") == ["getpetbyid", "get", "pet", "id"]  # whole and split; "by" is a stop word
    assert terms("create_or_update-file") == ["creat", "updat", "file"]


def test_names_are_also_kept_whole():
    assert "context7" in name_terms("context7")
    assert {"resolv", "librari", "id", "resolve-library-id"} <= set(name_terms("resolve-library-id"))
    assert "getpetbyid" in name_terms("getPetById")


def test_cjk_runs_become_character_bigrams():
    assert terms("查询天气") == ["查询", "询天", "天气"]
    assert terms("天") == ["天"]
    assert terms("获取YouTube视频") == ["获取", "视频", "youtub", "tube"]  # CJK first, then the stemmed words


def test_bm25_prefers_the_document_where_a_rare_term_weighs_most():
    index = LexicalIndex()
    index.add(1, bag("Get the weather forecast for a city", "get_forecast"))
    index.add(2, bag("Resolve a library name to an id", "resolve-library-id"), group=1)
    index.add(3, bag("Query the docs of a library", "context7"))
    assert [id_ for id_, _ in index.search(name_terms("context7"), 10)] == [3]
    found = index.search(terms("library docs"), 10)
    assert [id_ for id_, _ in found] == [3, 2]
    assert found[0][1] > found[1][1] > 0
    assert index.search(terms("nothing matches this"), 10) == []


def test_group_and_id_filters_are_exact():
    index = LexicalIndex()
    for id_ in range(50):
        index.add(id_, bag(f"search documents passages variant {id_}"), group=id_ % 2)
    assert {id_ for id_, _ in index.search(terms("search documents"), 100, group=1)} == set(range(1, 50, 2))
    assert [id_ for id_, _ in index.search(terms("search documents"), 100, ids=[7, 8, 999])] in ([7, 8], [8, 7])
    assert [id_ for id_, _ in index.search(terms("search"), 100, group=0, ids=[7, 8])] == [8]
    assert len(index.search(terms("search"), 5)) == 5


def test_add_replaces_and_remove_forgets():
    index = LexicalIndex()
    index.add(1, bag("send an email"))
    index.add(2, bag("send a message to a channel"))
    index.add(1, bag("post a tweet"))  # replaced: no longer about email
    assert index.search(terms("email"), 10) == []
    assert [id_ for id_, _ in index.search(terms("tweet"), 10)] == [1]
    index.remove([2, 12345])
    assert index.search(terms("channel"), 10) == []
    assert len(index) == 1 and 1 in index and 2 not in index


def test_compaction_keeps_every_result(monkeypatch: pytest.MonkeyPatch):
    index = LexicalIndex()
    for id_ in range(3000):
        index.add(id_, bag(f"tool {id_} reads {'files' if id_ % 3 else 'mail'} number{id_}"))
    before = index.search(terms("mail number2999"), 20)
    index.remove(range(0, 3000, 2))  # half the slots die: the posting lists are rebuilt
    assert index._dead == 0 and len(index._id_of) == 1500
    after = index.search(terms("mail number2999"), 20)
    assert after[0][0] == 2999 and {id_ for id_, _ in after} <= {id_ for id_ in range(1, 3000, 2)}
    assert before[0][0] == 2999
    assert all(id_ % 3 == 0 or id_ == 2999 for id_, _ in after)
    index.add(5000, bag("mail mail mail"))
    assert index.search(terms("mail"), 1)[0][0] == 5000


def test_stop_words_alone_match_nothing():
    index = LexicalIndex()
    index.add(1, bag("the and of"))
    assert index.search(terms("the and of"), 10) == []
    assert "the" in lexical.STOP_WORDS


def test_several_queries_at_once_rank_as_each_alone():
    index = LexicalIndex()
    for id_ in range(200):
        index.add(id_, bag(f"{['send', 'read', 'list'][id_ % 3]} {['mail', 'files', 'issues'][id_ % 5 % 3]} {id_}"),
                  group=id_ % 2)
    queries = [terms("send mail"), terms("read files"), terms("nothing here"), terms("list issues 7")]
    for filters in ({}, {"group": 1}, {"ids": range(0, 200, 3)}, {"group": 0, "ids": [1, 2, 3, 4]}):
        assert index.search_many(queries, 10, **filters) == [index.search(query, 10, **filters) for query in queries]


def test_scores_after_an_update_match_an_index_built_afresh():
    """A term's cached BM25 contributions are dropped whenever the index changes (counts and lengths move)."""
    documents = {id_: bag(f"search {'mail' if id_ % 4 else 'files'} report {id_}") for id_ in range(40)}
    index = LexicalIndex()
    for id_, document_ in documents.items():
        index.add(id_, document_)
    query = terms("search mail report")
    index.search(query, 40)  # fills the cache
    index.add(100, bag("mail mail report"))
    index.remove([3, 5])
    documents[100] = bag("mail mail report")
    fresh = LexicalIndex()
    for id_, document_ in documents.items():
        if id_ not in (3, 5):
            fresh.add(id_, document_)
    assert index.search(query, 40) == fresh.search(query, 40)
    assert index.search(query, 1)[0][0] == 100


def test_a_floor_keeps_only_scores_near_the_best():
    index = LexicalIndex()
    for id_ in range(60):
        index.add(id_, bag(" ".join(["mail"] * (id_ % 6)) + f" filler words number {id_}"), group=id_ % 2)
    for filters in ({}, {"group": 1}, {"ids": range(10, 40)}):
        everything = index.search(terms("mail"), 100, **filters)
        kept = index.search(terms("mail"), 100, floor=0.9, **filters)
        assert kept == [(id_, score) for id_, score in everything if score >= 0.9 * everything[0][1]]
        assert 0 < len(kept) < len(everything)
    assert index.search(terms("mail"), 3, floor=0.5) == index.search(terms("mail"), 3)[:3]


def test_equal_scores_go_by_admission_order():
    index = LexicalIndex()
    for id_ in (5, 3, 9, 1):
        index.add(id_, bag("send mail"))
    index.add(7, bag("mail mail mail"))
    assert [id_ for id_, _ in index.search(terms("send mail"), 10)] == [5, 3, 9, 1, 7]
    cut = [id_ for id_, _ in index.search(terms("send"), 3)]  # which ties make the cut is not promised
    assert len(cut) == 3 and cut == sorted(cut, key=[5, 3, 9, 1].index)
