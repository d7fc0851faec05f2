"""DiscoveryIndex with the real multilingual embedder, the real lexical index and real Faiss indexes."""

from __future__ import annotations

import itertools

import pytest

from mesh.registry import discovery as discovery_module
from mesh.registry.discovery import DiscoveryIndex, Hit, name_words, tool_text
from mesh.registry.reputation import UNKNOWN_SCORE
from mesh.vectors import VectorIndex


def tool(name: str, description: str, *, title: str | None = None, read_only: bool | None = None) -> dict:
    """A wire tool dict, as an agent's tools/list returns it."""
    wire: dict = {"name": name, "description": description, "inputSchema": {"type": "object"}}
    if title:
        wire["title"] = title
    if read_only is not None:
        wire["annotations"] = {"readOnlyHint": read_only}
    return wire


LIBRARIAN = [
    tool("search_passages", "Search the documents for passages that match a query.", read_only=True),
    tool("add_document", "Add a document to the library so it can be searched later.", read_only=False),
]
PETSTORE = [
    tool("createPet", "Create a new pet in the store.", read_only=False),
    tool("getPetById", "Find a pet by its id.", read_only=True),
]
WEATHER = [tool("get_forecast", "Weather forecast for a city: temperature, rain and wind.", read_only=True)]


@pytest.fixture
def index() -> DiscoveryIndex:
    discovery = DiscoveryIndex()
    discovery.upsert("librarian", LIBRARIAN)
    discovery.upsert("petstore", PETSTORE)
    discovery.upsert("weather", WEATHER)
    return discovery


def names(hits: list[Hit]) -> list[tuple[str, str]]:
    return [(hit.agent, hit.tool) for hit in hits]


def test_names_are_split_into_words():
    assert name_words("getPetById") == "get pet by id"
    assert name_words("search_passages") == "search passages"
    assert name_words("HTTPServer-status") == "http server status"
    assert tool_text("pet_store", {"name": "createPet", "title": "Create", "description": "A pet."}) == (
        "pet store create pet Create A pet."
    )


def test_relevant_tool_ranks_above_unrelated_one(index: DiscoveryIndex):
    hits = index.search("search documents passages")
    found = names(hits)
    assert found[0] == ("librarian", "search_passages")
    # createPet is either ranked lower or, with no positive relevance at all, not a result
    assert ("petstore", "createPet") not in found[:1]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert all(hit.relevance > 0 for hit in hits)


def test_hit_json_shape(index: DiscoveryIndex):
    body = index.search("weather forecast", k=1)[0].to_json()
    assert body["agent"] == "weather" and body["tool"] == "get_forecast"
    assert set(body) >= {"agent", "tool", "description", "score", "relevance", "reputation", "annotations", "why"}
    assert body["reputation"] == UNKNOWN_SCORE == 0.6  # the prior's score, as GET /v1/agents shows it
    assert body["score"] == pytest.approx(body["relevance"] * 0.8, abs=1e-5)
    assert set(body["why"]) == {"lexical_rank", "name_rank", "semantic_rank", "similarity", "fused", "reputation",
                                "reputation_known", "proficiency", "need"}
    assert body["why"]["lexical_rank"] == body["why"]["name_rank"] == body["why"]["semantic_rank"] == 1
    assert body["why"]["fused"] == body["relevance"] == 1.0  # first for every ranker
    assert body["why"]["reputation_known"] is False and body["why"]["need"] is None
    assert body["why"]["proficiency"] is None  # nobody assessed


def test_k_limits_results(index: DiscoveryIndex):
    assert len(index.search("pet", k=2)) == 2
    with pytest.raises(ValueError):
        index.search("pet", k=0)


def test_agent_filter(index: DiscoveryIndex):
    hits = index.search("store", agent="petstore")
    assert names(hits) == [("petstore", "createPet"), ("petstore", "getPetById")]
    assert index.search("anything at all", agent="nobody") == []


def test_read_only_filter(index: DiscoveryIndex):
    read_only = index.search("pet", read_only=True, k=10)
    assert ("petstore", "getPetById") in names(read_only)
    assert all(hit.annotations.get("readOnlyHint") is True for hit in read_only)
    writable = index.search("pet", read_only=False, k=10)
    assert ("petstore", "createPet") in names(writable)
    assert all(hit.annotations.get("readOnlyHint") is not True for hit in writable)
    both = index.search("pet", agent="petstore", read_only=True)
    assert names(both) == [("petstore", "getPetById")]


def test_selective_agent_filter_among_many_tools():
    """The agent's tool is found even when thousands of better matches belong to other agents."""
    discovery = DiscoveryIndex(index_factory=lambda d: VectorIndex(d, exact_below=500))  # HNSW
    crowd = [tool(f"find_pet_{i}", f"Find a pet by its id, variant {i}.") for i in range(2000)]
    discovery.upsert_many({"crowd": crowd, "librarian": LIBRARIAN})
    assert "librarian" not in {hit.agent for hit in discovery.search("find a pet", k=50)}
    hits = discovery.search("find a pet", agent="librarian", k=5)
    assert names(hits) == [("librarian", "search_passages"), ("librarian", "add_document")]
    hits = discovery.search("find a pet", read_only=True, k=5)  # the whole crowd is unannotated
    assert names(hits) == [("librarian", "search_passages")]



@pytest.mark.parametrize(("exact_below", "scan_below"), [(20_000, 20_000), (500, 20_000), (500, 0)],
                         ids=["flat", "hnsw, small scopes scanned", "hnsw, every scope by a filtered walk"])
def test_a_scoped_search_ranks_only_that_scopes_tools_however_many_others_match_better(
        exact_below: int, scan_below: int, monkeypatch: pytest.MonkeyPatch):
    """A project's discovery keeps its own tools inside every ranker: filtering a whole-registry ranking
    afterwards would leave it nothing when other projects hold more than the depth of better matches."""
    monkeypatch.setattr(discovery_module, "SCAN_SCOPE_BELOW", scan_below)
    discovery = DiscoveryIndex(index_factory=lambda d: VectorIndex(d, exact_below=exact_below))
    crowd = [tool(f"find_pet_{i}", f"Find a pet by its id, variant {i}.", read_only=True) for i in range(600)]
    discovery.upsert_many({"crowd": crowd, "petstore": PETSTORE, "librarian": LIBRARIAN},
                          scopes={"crowd": "acme/big", "petstore": "default/default", "librarian": "default/default"})
    assert "petstore" not in {hit.agent for hit in discovery.search("find a pet", k=10)}
    mine = discovery.search("find a pet", k=3, scope="default/default")
    assert names(mine)[0] == ("petstore", "getPetById")
    assert {hit.agent for hit in mine} <= {"petstore", "librarian"}
    assert names(discovery.search("find a pet", scope="default/default", read_only=True, k=5))[0] == \
        ("petstore", "getPetById")
    assert all(hit.agent == "crowd" for hit in discovery.search("find a pet", k=20, scope="acme/big"))
    assert discovery.search("find a pet", agent="crowd", scope="default/default") == []  # not in that scope
    assert discovery.search("find a pet", scope="nobody/here") == []

    discovery.upsert("petstore", PETSTORE, scope="acme/big")  # moved: found in its new scope only
    assert "petstore" not in {hit.agent for hit in discovery.search("find a pet", k=10, scope="default/default")}
    assert "petstore" in {hit.agent for hit in discovery.search("find a pet by id", agent="petstore",
                                                                 scope="acme/big")}

def test_blocked_tool_never_appears(index: DiscoveryIndex):
    index.block("librarian", "search_passages")
    for kwargs in ({}, {"agent": "librarian"}, {"read_only": True}, {"k": 100}):
        assert ("librarian", "search_passages") not in names(index.search("search documents passages", **kwargs))
    index.upsert("librarian", LIBRARIAN)  # re-registering does not lift the block
    assert ("librarian", "search_passages") not in names(index.search("search documents passages", k=100))
    index.unblock("librarian", "search_passages")
    assert names(index.search("search documents passages"))[0] == ("librarian", "search_passages")


def test_block_before_registration(index: DiscoveryIndex):
    index.block("newcomer", "search_everything")
    index.upsert("newcomer", [tool("search_everything", "Search documents and passages everywhere.")])
    assert "newcomer" not in {hit.agent for hit in index.search("search documents passages", k=100)}
    assert index.is_blocked("newcomer", "search_everything")


def test_reputation_reorders_equally_relevant_tools():
    discovery = DiscoveryIndex()
    same = [tool("search_passages", "Search the documents for passages that match a query.")]
    discovery.upsert_many({"alpha": same, "beta": same})
    trusted = {"alpha": 0.1, "beta": 0.9}
    hits = discovery.search("search documents passages", reputation=lambda agent, _tool: trusted[agent])
    assert names(hits) == [("beta", "search_passages"), ("alpha", "search_passages")]
    trusted = {"alpha": 0.9, "beta": 0.1}
    hits = discovery.search("search documents passages", reputation=lambda agent, _tool: trusted[agent])
    assert names(hits) == [("alpha", "search_passages"), ("beta", "search_passages")]
    assert hits[0].reputation == 0.9 and hits[0].score == pytest.approx(hits[0].relevance * 0.95)


def test_unknown_reputation_is_the_prior():
    discovery = DiscoveryIndex()
    same = [tool("search_passages", "Search the documents for passages that match a query.")]
    discovery.upsert_many({"known": same, "unknown": same})
    hits = discovery.search("search passages", reputation=lambda agent, _tool: 0.55 if agent == "known" else None)
    assert names(hits)[0] == ("unknown", "search_passages")
    assert hits[0].reputation == UNKNOWN_SCORE and not hits[0].reputation_known
    assert hits[1].reputation == 0.55 and hits[1].reputation_known


def test_upsert_replaces_an_agents_tools(index: DiscoveryIndex):
    index.upsert("librarian", [tool("summarize", "Summarize a long text in a few sentences.")])
    found = names(index.search("search documents passages", k=100))
    assert ("librarian", "search_passages") not in found
    assert ("librarian", "add_document") not in found
    assert names(index.search("summarize text", agent="librarian")) == [("librarian", "summarize")]
    assert len(index) == 4


def test_upsert_moves_a_tool_between_read_only_partitions(index: DiscoveryIndex):
    changed = [tool("createPet", "Create a new pet in the store.", read_only=True), PETSTORE[1]]
    index.upsert("petstore", changed)
    assert ("petstore", "createPet") in names(index.search("create pet", read_only=True))
    assert ("petstore", "createPet") not in names(index.search("create pet", read_only=False, k=100))
    assert index.searchable() == len(index) == 5


def test_remove_agent(index: DiscoveryIndex):
    index.remove("librarian")
    assert "librarian" not in {hit.agent for hit in index.search("search documents passages", k=100)}
    index.remove("librarian")  # removing twice is harmless
    assert len(index) == 3


def test_single_tool():
    discovery = DiscoveryIndex()
    discovery.upsert("weather", WEATHER)
    hits = discovery.search("what is the weather tomorrow", k=10)
    assert names(hits) == [("weather", "get_forecast")]


def test_empty_index_and_empty_query():
    discovery = DiscoveryIndex()
    assert discovery.search("search documents passages") == []
    assert discovery.search("x", agent="someone", read_only=True) == []
    discovery.upsert("empty", [])
    assert discovery.search("search documents passages") == []
    discovery.upsert("weather", WEATHER)
    assert discovery.search("") == []


def test_bad_registration_changes_nothing(index: DiscoveryIndex):
    with pytest.raises(ValueError):
        index.upsert("librarian", [tool("a", "one"), tool("a", "two")])
    with pytest.raises(ValueError):
        index.upsert("librarian", [{"description": "no name"}])
    assert names(index.search("search documents passages"))[0] == ("librarian", "search_passages")


def test_proficiency_ranks_a_proficient_agents_tool_above_an_equal_novices():
    """Same tool, same reputation; one agent assessed proficient on the petstore, one novice, one never."""
    discovery = DiscoveryIndex()
    same = [tool("adopt_pet", "Adopt a pet: create it in the petstore with its name and species.")]
    discovery.upsert_many({"alpha": same, "beta": same, "omega": same})
    assert names(discovery.search("adopt a pet"))[0] == ("alpha", "adopt_pet")  # ties go by name
    assessed = {"omega": {"petstore": 0.95}, "alpha": {"petstore": 0.1}}
    hits = discovery.search("adopt a pet", proficiency=lambda agent: assessed.get(agent, {}))
    assert names(hits) == [("omega", "adopt_pet"), ("beta", "adopt_pet"), ("alpha", "adopt_pet")]
    why = [hit.to_json()["why"]["proficiency"] for hit in hits]
    assert why == [{"system": "petstore", "score": 0.95}, None, {"system": "petstore", "score": 0.1}]
    for hit, factor in zip(hits, (0.75 + 0.5 * 0.95, 1.0, 0.75 + 0.5 * 0.1), strict=True):
        assert hit.score == pytest.approx(hit.relevance * (0.5 + 0.5 * hit.reputation) * factor)


def test_proficiency_weighs_in_only_for_its_systems_tools():
    """A system named by the query counts too; an assessment on another system changes nothing."""
    discovery = DiscoveryIndex()
    same = [tool("create_record", "Create a record with the given fields.")]
    discovery.upsert_many({"alpha": same, "beta": same})
    assessed = {"alpha": {"tracker": 0.0}, "beta": {"tracker": 1.0}}
    hits = discovery.search("create a record in the tracker", proficiency=lambda agent: assessed[agent])
    assert names(hits)[0] == ("beta", "create_record")
    assert hits[0].to_json()["why"]["proficiency"] == {"system": "tracker", "score": 1.0}
    other = discovery.search("create a record", proficiency=lambda agent: assessed[agent])
    assert names(other)[0] == ("alpha", "create_record") and all(hit.proficiency is None for hit in other)
