"""The context budgeter with real wordllama embeddings and Faiss: relevance, the budget, the left-out report."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.knowledge import (
    AgentDefinition,
    Attempt,
    Blueprint,
    CapabilityNeed,
    ContextBudgeter,
    LearningSession,
    OptimizationExample,
    RecordStore,
    default_counter,
)
from mesh.knowledge.budget import SEPARATOR
from mesh.knowledge.tokens import EstimatedCounter, load_o200k, o200k_file

TOMATOES = LearningSession(
    agent="gardener",
    skill="watering tomato plants",
    goal="keep the tomato seedlings alive through a hot summer GOALMARK",
    attempts=[
        Attempt(action="watered the leaves every evening", outcome="failed", error="blight spread on the foliage"),
        Attempt(action="soaked the soil at the roots twice a week", tool="garden__water", outcome="succeeded"),
    ],
    failures=["blight spread on wet foliage"],
    lessons=["water tomatoes deeply at the roots two or three times a week, in the morning; mulch with straw"],
)
OTHERS = [
    LearningSession(
        agent="librarian",
        skill="paginated search",
        failures=["timeout when asking for 500 passages at once"],
        lessons=["ask for 20 passages and follow the cursor"],
    ),
    LearningSession(
        agent="clerk",
        skill="refund lookup",
        attempts=[Attempt(action="looked up the order by email", outcome="failed", error="HTTP 404 for the order")],
        failures=["orders are keyed by id, not by email"],
        lessons=["find the customer first, then list their orders"],
    ),
    LearningSession(
        agent="astronomer",
        skill="observing planets",
        failures=["clouds hid Jupiter"],
        lessons=["check the seeing forecast; Jupiter is best near opposition with a steady atmosphere"],
    ),
    LearningSession(
        agent="reviewer",
        skill="reviewing pull requests for security issues",
        failures=["missed an SQL injection in a string-formatted query"],
        lessons=["flag every query built with string formatting; ask for bound parameters"],
    ),
    LearningSession(
        agent="baker",
        skill="baking sourdough bread",
        failures=["the loaf came out dense"],
        lessons=["let the dough rise until it doubles; feed the starter the night before"],
    ),
]
DESIGNER = AgentDefinition(
    name="ux_designer",
    brief="Become a UX designer specialising in mobile apps: onboarding flows, accessibility, design reviews.",
    blueprint=Blueprint(
        role="UX designer for mobile apps",
        domain="mobile product design",
        objectives=["design onboarding screens", "review layouts for accessibility"],
        constraints=["read-only access to production data"],
        audience="product teams",
        capabilities=[CapabilityNeed(name="figma__export_frame", why="to show screens")],
    ),
)
DEMO = OptimizationExample(
    program="librarian.answer",
    inputs={"question": "How often should tomatoes be watered?", "passages": ["Soak the soil twice a week."]},
    outputs={"answer": "Deeply, two or three times a week."},
    score=1.0,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = RecordStore.open(tmp_path_factory.mktemp("records"))
    ids = store.put_many([TOMATOES, *OTHERS, DESIGNER, DEMO])
    names = ["tomatoes", "search", "refund", "planets", "review", "bread", "designer", "demo"]
    store.ids = dict(zip(names, ids, strict=True))
    yield store
    store.close()


@pytest.fixture(scope="module")
def budgeter(store):
    return ContextBudgeter(store)


def test_retrieval_puts_the_relevant_record_first(store):
    hits = store.search("how often should I water my tomato plants?", k=3, kinds=["learning_session"])
    assert hits[0].id == store.ids["tomatoes"]
    assert hits[0].score > hits[1].score
    hits = store.search("an agent that designs mobile app screens", k=3)
    assert hits[0].id == store.ids["designer"]
    hits = store.search("SQL injection in code review", k=1, kinds=["learning_session"])
    assert hits[0].id == store.ids["review"]


def test_the_context_holds_the_relevant_record_projected_and_says_what_it_dropped(store, budgeter):
    context = budgeter.build(
        "watering tomatoes", kinds=["learning_session"], fields=["skill", "lessons"], budget_tokens=60
    )
    assert context.included[0].id == store.ids["tomatoes"]
    assert context.text.startswith(f"[learning_session #{store.ids['tomatoes']}]\nskill: watering tomato plants")
    assert "mulch with straw" in context.text
    assert "GOALMARK" not in context.text and "blight" not in context.text  # goal, attempts, failures not asked for
    dropped = next(item for item in context.left_out if item.id == store.ids["tomatoes"])
    assert dropped.reason == "fields"
    assert dropped.fields == ["agent", "goal", "attempts", "failures", "started_at"]
    assert dropped.tokens > 0
    assert context.used_tokens <= 60 == context.budget_tokens


def test_paths_reach_inside_lists_of_objects(store, budgeter):
    context = budgeter.build(
        "watering tomatoes",
        kinds=["learning_session"],
        fields=["skill", "attempts.action", "attempts.outcome"],
        budget_tokens=400,
        k=1,
    )
    [included] = context.included
    assert included.projected["attempts"][0] == {"action": "watered the leaves every evening", "outcome": "failed"}
    assert "blight" not in context.text
    [dropped] = context.left_out
    assert dropped.fields == ["agent", "goal", "attempts.error", "attempts.tool", "failures", "lessons", "started_at"]


def test_fields_per_kind_and_demos_for_dspy(store, budgeter):
    context = budgeter.build(
        "tomatoes watering question",
        kinds=["optimization_example", "learning_session"],
        fields={"optimization_example": ["inputs.question", "outputs"]},
        budget_tokens=2000,
    )
    demo = next(item for item in context.included if item.kind == "optimization_example")
    assert demo.projected == {"inputs": {"question": DEMO.inputs["question"]}, "outputs": DEMO.outputs}
    assert demo.record == DEMO
    sessions = [item for item in context.included if item.kind == "learning_session"]
    assert sessions and all(item.fields == list(LearningSession.DEFAULT_FIELDS) for item in sessions)


def test_every_retrieved_record_is_accounted_for(store, budgeter):
    k = len(store.ids)
    context = budgeter.build("gardening and baking", budget_tokens=120, k=k)
    whole = [item for item in context.left_out if item.reason != "fields"]
    included = [item.id for item in context.included]
    assert sorted(included + [item.id for item in whole]) == sorted(store.ids.values())
    assert not set(included) & {item.id for item in whole}
    for item in whole:
        assert f"#{item.id}]" not in context.text
    for item in context.included:
        assert f"[{item.kind} #{item.id}]" in context.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    budget=st.integers(min_value=0, max_value=400),
    fields=st.sampled_from([None, ["skill"], ["skill", "attempts", "lessons"], ["attempts.error", "failures"]]),
    task=st.sampled_from(["tomatoes", "refunds and orders", "bread", "security review", "anything at all"]),
)
def test_the_budget_is_never_exceeded_and_left_out_records_did_not_fit(budgeter, budget, fields, task):
    counter = budgeter.counter
    kinds = ["learning_session"]
    context = budgeter.build(
        task, kinds=kinds, fields={"learning_session": fields} if fields else None, budget_tokens=budget
    )
    assert context.used_tokens == counter.count(context.text) <= budget
    blocks = context.text.split(SEPARATOR) if context.text else []
    assert len(blocks) == len(context.included)
    assert [counter.count(block) for block in blocks] == [item.tokens for item in context.included]
    left = budget - context.used_tokens
    for item in context.left_out:
        assert item.reason in ("budget", "fields")
        if item.reason == "budget":  # it did not fit in what was left when its turn came (at least as much as now)
            assert item.tokens + counter.count(SEPARATOR) > left
    scores = [item.score for item in context.included]
    assert scores == sorted(scores, reverse=True)


def test_a_budget_of_zero_leaves_everything_out(store, budgeter):
    context = budgeter.build("tomatoes", budget_tokens=0, kinds=["learning_session"])
    assert (context.text, context.used_tokens, context.included) == ("", 0, [])
    assert sorted(context.left_out_records("budget")) == sorted(
        store.ids[name] for name in ("tomatoes", "search", "refund", "planets", "review", "bread")
    )


def test_min_score_and_where_are_reported(store, budgeter):
    context = budgeter.build(
        "watering tomato plants",
        kinds=["learning_session"],
        budget_tokens=2000,
        min_score=0.5,
        where=lambda record: record.agent != "baker",
    )
    assert [item.id for item in context.included] == [store.ids["tomatoes"]]
    reasons = {item.id: item.reason for item in context.left_out if item.reason != "fields"}
    assert set(reasons.values()) <= {"min_score", "filtered"}
    assert len(reasons) == len(OTHERS)
    context = budgeter.build(
        "bread", kinds=["learning_session"], budget_tokens=2000, where=lambda record: record.agent != "baker"
    )
    assert context.left_out_records("filtered") == [store.ids["bread"]]


def test_unknown_fields_and_kinds_are_refused(budgeter):
    with pytest.raises(ValueError, match="no field colour"):
        budgeter.build("x", kinds=["learning_session"], fields={"learning_session": ["colour"]}, budget_tokens=10)
    with pytest.raises(LookupError, match="unknown record kind"):
        budgeter.build("x", kinds=["recipe"], budget_tokens=10)
    with pytest.raises(TypeError):
        budgeter.build("x", fields="skill", budget_tokens=10)
    with pytest.raises(ValueError, match="field colour"):
        budgeter.build(
            "x", kinds=["learning_session", "agent_definition"], fields=["skill", "colour"], budget_tokens=10
        )
    with pytest.raises(ValueError, match="agent_definition"):
        budgeter.build("x", kinds=["learning_session", "agent_definition"], fields=["skill"], budget_tokens=10)
    with pytest.raises(LookupError, match="recipe"):
        budgeter.build("x", fields={"recipe": ["name"]}, budget_tokens=10)


def test_a_list_of_fields_applies_to_each_kind_what_it_has(store, budgeter):
    context = budgeter.build(
        "tomatoes", kinds=["learning_session", "agent_definition"], fields=["skill", "name"], budget_tokens=5000
    )
    fields = {item.kind: item.fields for item in context.included}
    assert fields == {"learning_session": ["skill"], "agent_definition": ["name"]}
    assert "\nname: ux_designer" in context.text


# -- token counting ---------------------------------------------------------------------------------

SAMPLES = [
    "Hello, world!",
    '{"skill": "paginated search", "lessons": ["ask for 20 passages and follow the cursor"]}',
    "Tomato plants need deep, regular watering: soak the soil around the roots two or three times a week.",
    "Zürich — naïve café 東京 🚀 emoji and accents",
]


@pytest.mark.skipif(o200k_file() is None, reason="no o200k_base file installed (litellm not present)")
def test_the_offline_counter_is_tiktokens_o200k(monkeypatch):
    import tiktoken

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(o200k_file().parent))
    official = tiktoken.get_encoding("o200k_base")
    ours = load_o200k(o200k_file())
    assert ours.name == "o200k_base" == default_counter().name
    for text in SAMPLES:
        assert ours.count(text) == len(official.encode_ordinary(text))


@pytest.mark.skipif(o200k_file() is None, reason="no o200k_base file installed (litellm not present)")
def test_the_estimate_errs_high(store, budgeter):
    estimate = EstimatedCounter()
    texts = [*SAMPLES, budgeter.build("tomatoes", budget_tokens=5000).text]
    for text in texts:
        assert estimate.count(text) >= budgeter.counter.count(text)


def test_a_tampered_tokenizer_file_is_refused(tmp_path):
    fake = tmp_path / "o200k"
    fake.write_bytes(b"AAAA 0\n")
    with pytest.raises(ValueError, match="SHA-256"):
        load_o200k(fake)
