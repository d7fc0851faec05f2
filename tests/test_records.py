"""Compressed records: lossless round trips, dictionaries that keep old records readable, schema upgrades."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.knowledge import (
    AgentDefinition,
    Attempt,
    Blueprint,
    CapabilityNeed,
    LearningSession,
    OptimizationExample,
    RecordCodec,
    RecordStore,
    TraceStep,
)
from mesh.knowledge import codec as record_codec
from mesh.knowledge import records as record_module

WORDS = [
    *("search", "passage", "timeout", "refund", "order", "customer", "invoice", "schema", "tool", "agent"),
    *("policy", "scope", "retry", "page", "cursor", "tomato", "garden", "compost", "review", "commit"),
    *("branch", "query", "report", "month", "region", "latency", "budget", "token", "frame"),
]


def fake_embed(texts: list[str]):
    """A cheap deterministic embedding: these tests are about bytes, not meaning."""
    import numpy as np

    rows = np.zeros((len(texts), 16), np.float32)
    for i, text in enumerate(texts):
        for word in text.split():
            rows[i, hash(word) % 16] += 1
    return rows


def store_at(path, **options) -> RecordStore:
    return RecordStore(path, embed=fake_embed, dimension=16, model_name="fake-16", **options)


def varied_sessions(n: int, seed: int = 1) -> list[LearningSession]:
    rng = random.Random(seed)

    def sentence(k: int = 8) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k)) + f" {rng.randint(0, 10**6)}"

    return [
        LearningSession(
            agent=rng.choice(["librarian", "clerk", "reviewer"]),
            skill=sentence(3),
            goal=sentence(),
            attempts=[
                Attempt(
                    action=sentence(),
                    tool=rng.choice(["librarian__search", "orders__get", None]),
                    arguments={"q": sentence(2), "k": rng.randint(1, 50)},
                    outcome=rng.choice(["succeeded", "failed", "partial"]),
                    error=rng.choice([None, f"timeout after {rng.randint(1, 60)} s"]),
                    score=rng.random(),
                )
                for _ in range(rng.randint(1, 4))
            ],
            failures=[sentence() for _ in range(rng.randint(0, 3))],
            lessons=[sentence(12) for _ in range(rng.randint(1, 3))],
            score_before=rng.random(),
            started_at=datetime(2026, 1, 1 + i % 28, 12, i % 60, tzinfo=UTC),
        )
        for i in range(n)
    ]


# -- strategies -------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(st.text(max_size=6), json_values, max_size=3)
finite = st.floats(allow_nan=False, allow_infinity=False)
moments = st.datetimes(timezones=st.none() | st.just(UTC))
texts = st.text(max_size=40)

attempts = st.builds(
    Attempt,
    action=texts,
    tool=st.none() | texts,
    arguments=json_objects,
    outcome=st.sampled_from(["succeeded", "failed", "partial"]),
    error=st.none() | texts,
    score=st.none() | finite,
)
learning_sessions = st.builds(
    LearningSession,
    agent=texts,
    skill=texts,
    goal=texts,
    attempts=st.lists(attempts, max_size=3),
    failures=st.lists(texts, max_size=3),
    lessons=st.lists(texts, max_size=3),
    score_before=st.none() | finite,
    score_after=st.none() | finite,
    started_at=moments,
    tags=st.lists(texts, max_size=3),
)
agent_definitions = st.builds(
    AgentDefinition,
    name=texts,
    brief=texts,
    blueprint=st.builds(
        Blueprint,
        role=texts,
        domain=texts,
        objectives=st.lists(texts, max_size=3),
        constraints=st.lists(texts, max_size=3),
        audience=texts,
        capabilities=st.lists(st.builds(CapabilityNeed, name=texts, why=texts), max_size=3),
    ),
    instructions=texts,
    created_at=moments,
)
optimization_examples = st.builds(
    OptimizationExample,
    program=texts,
    inputs=json_objects,
    outputs=json_objects,
    trace=st.lists(st.builds(TraceStep, module=texts, inputs=json_objects, outputs=json_objects), max_size=2),
    score=st.none() | finite,
    source=texts,
    created_at=moments,
)
any_record = learning_sessions | agent_definitions | optimization_examples


@pytest.fixture(scope="module")
def trained_codecs():
    """Two dictionary versions per kind, trained on different material, and a codec knowing both."""
    dictionaries = []
    for seed, version in ((1, 1), (2, 2)):
        sessions = varied_sessions(300, seed)
        for kind, samples in (
            ("learning_session", sessions),
            ("agent_definition", [_definition(s) for s in sessions]),
            ("optimization_example", [_example(s) for s in sessions]),
        ):
            taken = {d.dict_id for d in dictionaries}
            payloads = [record_codec.pack(r) for r in samples]
            dictionaries.append(record_codec.train(kind, version, payloads, size=8192, taken=taken))
    v1 = RecordCodec([d for d in dictionaries if d.version == 1])
    both = RecordCodec(dictionaries)
    return v1, both


def _definition(session: LearningSession) -> AgentDefinition:
    return AgentDefinition(
        name=session.agent,
        brief=session.goal,
        blueprint=Blueprint(role=session.skill, objectives=session.lessons, capabilities=[CapabilityNeed(name="x")]),
    )


def _example(session: LearningSession) -> OptimizationExample:
    return OptimizationExample(
        program="learning.assess", inputs={"task": session.goal}, outputs={"lessons": session.lessons}
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=any_record)
def test_a_record_round_trips_without_a_dictionary(record):
    codec = RecordCodec()
    dict_id, frame = codec.encode(record)
    assert dict_id == 0
    decoded = codec.decode(frame)
    assert decoded == record
    assert type(decoded) is type(record)
    assert record_module.dump_record(decoded) == record_module.dump_record(record)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record=any_record)
def test_a_record_round_trips_across_dictionary_versions(trained_codecs, record):
    """Written under v1, the frame still decodes once v2 is current; written under v2 it decodes too."""
    v1, both = trained_codecs
    old_id, old_frame = v1.encode(record)
    new_id, new_frame = both.encode(record)
    assert old_id == v1.current(record.KIND).dict_id
    assert new_id == both.current(record.KIND).dict_id != old_id
    assert zstandard.get_frame_parameters(old_frame).dict_id == old_id
    assert both.decode(old_frame) == record
    assert both.decode(new_frame) == record


def test_a_frame_needs_the_dictionary_it_names(trained_codecs):
    v1, both = trained_codecs
    record = varied_sessions(1, seed=9)[0]
    _, frame = both.encode(record)
    with pytest.raises(LookupError, match="dictionary"):
        v1.decode(frame)  # v1's codec does not know v2's dictionary
    with pytest.raises(LookupError):
        RecordCodec().decode(frame)


def test_the_store_trains_per_kind_and_old_rows_survive_retraining(tmp_path):
    sessions = varied_sessions(900, seed=3)
    path = tmp_path / "records.sqlite3"
    store = store_at(path, train_at=300, dict_size=8192)
    first = store.put_many(sessions[:299])
    assert store.stats("learning_session").with_dictionary == 0
    first += store.put_many(sessions[299:300])  # the 300th record trains v1 and recompresses all
    stats = store.stats("learning_session")
    assert (stats.records, stats.with_dictionary, stats.dictionary_version) == (300, 300, 1)
    second = store.put_many(sessions[300:600])
    v2 = store.train_dictionary("learning_session")  # rows written so far keep v1
    third = store.put_many(sessions[600:])
    v1 = next(d for d in store.dictionaries() if d.version == 1)
    assert v2.version == 2 and v2.dict_id != v1.dict_id
    rows = dict(store._conn.execute("SELECT id, dict_id FROM records").fetchall())
    assert {rows[i] for i in first + second} == {v1.dict_id}
    assert {rows[i] for i in third} == {v2.dict_id}
    store.close()

    reopened = store_at(path, train_at=300)
    ids = first + second + third
    found = reopened.get_many(ids)
    assert [found[i] for i in ids] == sessions
    assert reopened.recompress("learning_session") == 600
    rows = dict(reopened._conn.execute("SELECT id, dict_id FROM records").fetchall())
    assert set(rows.values()) == {v2.dict_id}
    assert [reopened.get(i) for i in ids] == sessions
    reopened.close()


def test_dictionaries_are_per_kind(tmp_path):
    store = store_at(tmp_path / "r.sqlite3", train_at=10**9, dict_size=8192)
    sessions = varied_sessions(300, seed=4)
    store.put_many(sessions)
    store.put_many([_example(s) for s in sessions])
    store.train_dictionary("learning_session")
    assert store.stats("learning_session").dictionary_version == 1
    assert store.stats("optimization_example").dictionary_version is None
    _, frame = store.codec.encode(_example(sessions[0]))
    assert zstandard.get_frame_parameters(frame).dict_id == 0
    store.close()


def test_a_dictionary_pays_on_short_records(tmp_path):
    """Not a benchmark: a dictionary that did nothing would leave the ratio where plain zstd has it."""
    sessions = varied_sessions(600, seed=5)
    plain = store_at(tmp_path / "plain.sqlite3", train_at=10**9)
    plain.put_many(sessions)
    trained = store_at(tmp_path / "dict.sqlite3", train_at=300, dict_size=16384)
    trained.put_many(sessions)
    assert trained.stats("learning_session").ratio > 1.5 * plain.stats("learning_session").ratio
    plain.close()
    trained.close()


def test_a_kind_with_too_few_records_stays_plainly_compressed(tmp_path):
    store = store_at(tmp_path / "r.sqlite3", train_at=2)
    ids = store.put_many(varied_sessions(2))
    assert store.stats("learning_session").with_dictionary == 0
    assert [store.get(i).KIND for i in ids] == ["learning_session"] * 2
    store.close()


# -- schema versions --------------------------------------------------------------------------------


class LearningSessionV2(LearningSession):
    """A later schema: the environment the session ran in became a field of its own."""

    SCHEMA_VERSION = 2
    environment: str


def test_an_old_schema_version_is_upgraded_on_read(tmp_path, monkeypatch):
    store = store_at(tmp_path / "r.sqlite3")
    session = varied_sessions(1)[0].model_copy(update={"tags": ["sandbox", "regression"]})
    id_ = store.put(session)

    def from_v1(data: dict) -> dict:
        tags = data.pop("tags")
        return {
            **data,
            "tags": [t for t in tags if t != "sandbox"],
            "environment": "sandbox" if "sandbox" in tags else "",
        }

    monkeypatch.setitem(record_module.KINDS, "learning_session", LearningSessionV2)
    monkeypatch.setitem(record_module._UPGRADES, ("learning_session", 1), from_v1)
    upgraded = store.get(id_)
    assert isinstance(upgraded, LearningSessionV2)
    assert (upgraded.environment, upgraded.tags, upgraded.lessons) == ("sandbox", ["regression"], session.lessons)
    store.close()


def test_an_old_schema_without_an_upgrade_is_refused(monkeypatch):
    _, frame = RecordCodec().encode(varied_sessions(1)[0])
    monkeypatch.setitem(record_module.KINDS, "learning_session", LearningSessionV2)
    with pytest.raises(LookupError, match="no upgrade"):
        RecordCodec().decode(frame)


def test_a_newer_schema_than_the_code_knows_is_refused(monkeypatch):
    monkeypatch.setitem(record_module.KINDS, "learning_session", LearningSessionV2)
    _, frame = RecordCodec().encode(LearningSessionV2(agent="a", skill="s", environment="e"))
    monkeypatch.setitem(record_module.KINDS, "learning_session", LearningSession)
    with pytest.raises(ValueError, match="schema version 2"):
        RecordCodec().decode(frame)


def test_records_refuse_values_msgpack_or_json_would_change():
    with pytest.raises(ValueError):
        LearningSession(agent="a", skill="s", score_before=float("nan"))
    with pytest.raises(ValueError):
        OptimizationExample(program="p", inputs={"x": float("inf")}, outputs={})


# -- the store's vectors ----------------------------------------------------------------------------


def test_vectors_survive_a_restart_and_a_new_model_re_embeds(tmp_path):
    path = tmp_path / "r.sqlite3"
    sessions = varied_sessions(20, seed=6)
    store = store_at(path)
    ids = store.put_many(sessions)
    before = store.search(sessions[3].search_text(), k=1)
    store.close()

    calls: list[int] = []

    def counting_embed(texts):
        calls.append(len(texts))
        return fake_embed(texts)

    same = RecordStore(path, embed=counting_embed, dimension=16, model_name="fake-16")
    assert calls == [] and same.search_vector(fake_embed([sessions[3].search_text()])[0], k=1) == before
    same.close()
    changed = RecordStore(path, embed=counting_embed, dimension=16, model_name="fake-16-v2")
    assert calls == [len(ids)]  # every record embedded again, once
    assert changed.search(sessions[3].search_text(), k=1)[0].id == ids[3]
    changed.close()


def test_deleted_records_are_gone_from_search_and_reads(tmp_path):
    store = store_at(tmp_path / "r.sqlite3")
    sessions = varied_sessions(5, seed=8)
    ids = store.put_many(sessions)
    assert store.delete([ids[0], 10**6]) == 1
    assert ids[0] not in {hit.id for hit in store.search(sessions[0].search_text(), k=5)}
    assert store.get_many(ids).keys() == set(ids[1:])
    with pytest.raises(KeyError):
        store.get(ids[0])
    store.close()


def test_an_embedding_of_the_wrong_shape_writes_nothing(tmp_path):
    store = RecordStore(tmp_path / "r.sqlite3", embed=fake_embed, dimension=32, model_name="fake")
    with pytest.raises(ValueError, match="shape"):
        store.put(varied_sessions(1)[0])
    assert store.count() == 0
    store.close()
