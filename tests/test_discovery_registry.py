"""Discovery through a running registry: reading never changes a reputation or a ranking, an uncalled agent
reads the same everywhere, and every result explains its rank."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from mesh.registry.reputation import UNKNOWN_SCORE

from .test_registry_e2e import Mesh, running_mesh

QUERIES = ("find passages in documents", "call a mock API operation", "sandbox", "列出文档")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory, "discovery", ("librarian", "sandbox")) as network:
        yield network


def discover(mesh: Mesh, query: str, **params: object) -> list[dict]:
    response = httpx.get(f"{mesh.url}/v1/discover", params={"q": query, "k": 20, **params})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def read_everything(mesh: Mesh) -> None:
    """Every read the registry serves that touches reputation."""
    for path in ("/v1/agents", "/v1/agents/librarian", "/v1/agents/sandbox", "/v1/runs", "/metrics"):
        assert httpx.get(f"{mesh.url}{path}").status_code == 200, path


def test_reading_agents_runs_and_discovery_changes_no_reputation_and_no_ranking(mesh: Mesh):
    before = {query: discover(mesh, query) for query in QUERIES}
    agents_before = listing(mesh)
    for _ in range(3):
        read_everything(mesh)
    assert {query: discover(mesh, query) for query in QUERIES} == before
    assert listing(mesh) == agents_before


def listing(mesh: Mesh) -> list[dict]:
    """GET /v1/agents without ``last_seen``, which an agent's heartbeat moves (not a read)."""
    return [{key: value for key, value in agent.items() if key != "last_seen"}
            for agent in httpx.get(f"{mesh.url}/v1/agents").json()["agents"]]


def test_an_uncalled_agent_reads_the_same_everywhere(mesh: Mesh):
    read_everything(mesh)
    listed = mesh.agent("sandbox")
    assert listed["reputation"]["score"] == UNKNOWN_SCORE and listed["reputation"]["calls"] == 0
    assert {r["score"] for r in listed["tool_reputation"].values()} == {UNKNOWN_SCORE}
    hits = discover(mesh, "call a mock API operation", agent="sandbox")
    assert hits and {hit["reputation"] for hit in hits} == {UNKNOWN_SCORE}
    assert not any(hit["why"]["reputation_known"] for hit in hits)


def test_after_a_call_discovery_reports_the_learnt_score(mesh: Mesh):
    response = mesh.invoke("librarian", "list_documents", {})
    assert response.status_code == 200, response.text
    learnt = mesh.agent("librarian")["tool_reputation"]["list_documents"]
    assert learnt["calls"] == 1
    hit = next(hit for hit in discover(mesh, "list the indexed documents", agent="librarian")
               if hit["tool"] == "list_documents")
    assert hit["why"]["reputation_known"] is True
    assert hit["reputation"] == pytest.approx(learnt["score"], abs=1e-4)
    assert mesh.agent("sandbox")["reputation"]["calls"] == 0  # the other agent is untouched


def test_every_result_says_why_it_ranked(mesh: Mesh):
    for query in QUERIES:
        hits = discover(mesh, query)
        assert hits, query
        for hit in hits:
            why = hit["why"]
            ranks = [why[key] for key in ("lexical_rank", "name_rank", "semantic_rank") if why[key] is not None]
            assert ranks and why["fused"] == hit["relevance"] and why["reputation"] == hit["reputation"]
            assert hit["score"] == pytest.approx(hit["relevance"] * (0.5 + 0.5 * hit["reputation"]), abs=1e-5)
        assert [hit["score"] for hit in hits] == sorted((hit["score"] for hit in hits), reverse=True)
    task = discover(mesh, "search the documents for passages about keys, then list the mock APIs")
    assert {hit["why"]["need"] for hit in task} >= {"search the documents for passages about keys",
                                                   "list the mock APIs"}
