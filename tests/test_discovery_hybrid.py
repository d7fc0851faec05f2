"""Hybrid discovery on the public MCP servers of bench/data/catalogue.json: names, languages, several needs,
explanations, exact filters and incremental updates, with the real encoder and the real indexes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mesh import embedding
from mesh.registry.discovery import RRF_K, DiscoveryIndex, Hit, needs

CATALOGUE = Path(__file__).resolve().parent.parent / "bench" / "data" / "catalogue.json"


def load() -> tuple[dict[str, list[dict]], dict[str, str]]:
    agents = json.loads(CATALOGUE.read_text())["agents"]
    return {a["agent"]: a["tools"] for a in agents}, {a["agent"]: a["description"] for a in agents}


@pytest.fixture(scope="module")
def index() -> DiscoveryIndex:
    tools, descriptions = load()
    discovery = DiscoveryIndex()
    discovery.upsert_many(tools, descriptions=descriptions)
    return discovery


def found(hits: list[Hit]) -> list[str]:
    return [f"{hit.agent}/{hit.tool}" for hit in hits]


@pytest.mark.parametrize(
    ("query", "agent"),
    [
        ("use context7", "context7"),
        ("context7 docs for react hooks", "context7"),
        ("search with tavily", "tavily"),
        ("firecrawl this url", "firecrawl"),
        ("Ant Design Table component docs", "antd-components"),
        ("kubectl logs of the api pod", "kubernetes"),
        ("howtocook recipes", "howtocook"),
    ],
)
def test_a_product_named_in_the_query_ranks_its_tools_first(index: DiscoveryIndex, query: str, agent: str):
    hits = index.search(query, k=5)
    assert hits[0].agent == agent, found(hits)
    assert hits[0].lexical_rank == 1


def test_a_tool_name_typed_as_is_is_found_first(index: DiscoveryIndex):
    assert found(index.search("maps_direction_driving", k=3))[0] == "amap-maps/maps_direction_driving"
    assert found(index.search("resolve-library-id", k=3))[0] == "context7/resolve-library-id"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("给网页截个图", {"playwright/browser_take_screenshot", "puppeteer/puppeteer_screenshot",
                          "chrome-devtools/take_screenshot", "webresearch/take_screenshot"}),
        ("在Slack频道里发一条消息", {"slack/slack_post_message"}),
        ("envoyer un message sur Slack", {"slack/slack_post_message"}),
    ],
)
def test_a_query_in_another_language_finds_tools_described_in_english(index: DiscoveryIndex, query: str,
                                                                      expected: set[str]):
    assert expected & set(found(index.search(query, k=5)))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("what should I cook for dinner tonight", {"howtocook/mcp_howtocook_whatToEat",
                                                   "howtocook/mcp_howtocook_recommendMeals"}),
        ("cycling route from the station to the park", {"amap-maps/maps_bicycling"}),
        ("get a few sample rows from the orders table", {"universal-db/get_sample_data"}),
    ],
)
def test_an_english_query_finds_tools_described_in_chinese(index: DiscoveryIndex, query: str, expected: set[str]):
    assert expected & set(found(index.search(query, k=5)))


def test_needs_are_split_at_clauses_and_sequencing_words():
    assert needs("weather forecast") == ["weather forecast"]
    assert needs("search issues about leaks, then post a summary to Slack") == [
        "search issues about leaks", "post a summary to Slack"]
    assert needs("read the CSV file from disk and draw a line chart of revenue") == [
        "read the CSV file from disk", "draw a line chart of revenue"]
    assert needs("cats and dogs") == ["cats and dogs"]  # "and" inside a short need does not split it
    assert needs("Paris: weather tomorrow") == ["Paris: weather tomorrow"]  # a one-word fragment joins the rest
    assert needs("describe the pod: read its logs, then restart it") == [
        "describe the pod", "read its logs restart it"]
    assert needs("open draw.io and stripe.com") == ["open draw.io and stripe.com"]
    assert needs("查一下上海的天气，然后推荐几道菜") == ["查一下上海的天气", "推荐几道菜"]
    assert needs("   ") == []
    assert needs("a b c, d e f, g h i, j k l, m n o, p q r") == ["a b c", "d e f", "g h i", "j k l m n o p q r"]
    assert needs("a place for 4 guests next weekend, then check the weather") == [
        "a place for 4 guests next weekend", "check the weather"]


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        ("Search GitHub for issues about memory leaks, then post a summary to the #eng Slack channel",
         {"github/search_issues", "slack/slack_post_message"}),
        ("Read the CSV file from disk and draw a line chart of monthly revenue",
         {"antv-chart/generate_line_chart"}),
        ("Find out why the api pod keeps crashing: describe it, read its logs, then restart the deployment",
         {"kubernetes/kubectl_describe", "kubernetes/kubectl_logs"}),
        ("帮我查一下上海的天气，然后推荐几道今天吃的菜",
         {"howtocook/mcp_howtocook_whatToEat"}),
    ],
)
def test_a_task_with_several_needs_gets_tools_for_each_need(index: DiscoveryIndex, query: str, wanted: set[str]):
    hits = index.search(query, k=10)
    assert wanted <= set(found(hits)), found(hits)
    assert len({hit.need for hit in hits if hit.need}) >= 2  # the answer draws on more than one need


def test_each_need_brings_its_best_tool_near_the_top(index: DiscoveryIndex):
    hits = index.search("Query the sales table in Postgres and make a pie chart of revenue by region", k=5)
    assert {"postgres/query", "antv-chart/generate_pie_chart"} <= set(found(hits)[:3]), found(hits)
    assert {hit.need for hit in hits[:3]} >= {"Query the sales table in Postgres",
                                              "make a pie chart of revenue by region"}


@pytest.mark.parametrize("query", ["take a screenshot", "context7", "查询天气", "list files, then send an email"])
def test_every_hit_explains_its_rank(index: DiscoveryIndex, query: str):
    reputations = {"playwright": 0.9, "puppeteer": 0.2}
    hits = index.search(query, k=10, reputation=lambda agent, _tool: reputations.get(agent))
    assert hits
    for hit in hits:
        ranks = [rank for rank in (hit.lexical_rank, hit.name_rank, hit.semantic_rank) if rank is not None]
        assert ranks and all(isinstance(rank, int) and rank >= 1 for rank in ranks)
        assert hit.relevance == pytest.approx(sum(1 / (RRF_K + rank) for rank in ranks) / (3 / (RRF_K + 1)))
        assert hit.score == pytest.approx(hit.relevance * (0.5 + 0.5 * hit.reputation))
        assert (hit.similarity is None) == (hit.semantic_rank is None)
        assert hit.reputation_known == (hit.agent in reputations)
        why = hit.to_json()["why"]
        assert (why["lexical_rank"], why["name_rank"], why["semantic_rank"]) == (
            hit.lexical_rank, hit.name_rank, hit.semantic_rank)
        assert why["fused"] == round(hit.relevance, 6) and why["reputation"] == round(hit.reputation, 6)
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_filters_stay_exact_with_both_rankers(index: DiscoveryIndex):
    tools, _ = load()
    read_only = {f"{a}/{t['name']}" for a, ts in tools.items() for t in ts
                 if (t.get("annotations") or {}).get("readOnlyHint") is True}
    for query in ("take a screenshot of the page", "context7", "write a file"):
        assert set(found(index.search(query, k=100, read_only=True))) <= read_only
        assert not set(found(index.search(query, k=100, read_only=False))) & read_only
        only = index.search(query, k=100, agent="github")
        assert only and {hit.agent for hit in only} == {"github"}
    assert index.search("context7", agent="nobody") == []


def test_a_blocked_tool_is_not_found_even_by_its_own_name():
    tools, descriptions = load()
    discovery = DiscoveryIndex()
    discovery.upsert_many({agent: tools[agent] for agent in ("context7", "github", "filesystem")},
                          descriptions=descriptions)
    discovery.block("context7", "resolve-library-id")
    for kwargs in ({}, {"agent": "context7"}, {"read_only": True}, {"k": 100}):
        assert "context7/resolve-library-id" not in found(discovery.search("resolve-library-id", **kwargs))
    discovery.unblock("context7", "resolve-library-id")
    assert found(discovery.search("resolve-library-id"))[0] == "context7/resolve-library-id"


class CountingEmbedder:
    """The multilingual embedder, counting the texts it embeds."""

    name, dimension = embedding.MULTILINGUAL.name, embedding.MULTILINGUAL.dimension

    def __init__(self) -> None:
        self.texts: list[str] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts += texts
        return embedding.MULTILINGUAL.embed(texts)


def test_admission_and_removal_update_both_rankers_one_agent_at_a_time():
    tools, descriptions = load()
    embedder = CountingEmbedder()
    discovery = DiscoveryIndex(embedder=embedder)
    discovery.upsert_many(tools, descriptions=descriptions)
    assert len(embedder.texts) == sum(map(len, tools.values()))
    news = [{"name": "get_headlines", "description": "Latest headlines from BBC News, by section.",
             "inputSchema": {"type": "object", "properties": {"section": {}}}}]
    assert "bbc-news" not in {hit.agent for hit in discovery.search("bbc", k=20)}

    embedder.texts.clear()
    discovery.upsert("bbc-news", news, description="BBC News")
    assert len(embedder.texts) == 1  # only the new tool is embedded
    assert found(discovery.search("bbc", k=3))[0] == "bbc-news/get_headlines"
    assert found(discovery.search("headlines by section", agent="bbc-news")) == ["bbc-news/get_headlines"]

    embedder.texts.clear()
    discovery.upsert("bbc-news", news, description="BBC News")  # unchanged: nothing embedded, nothing moved
    assert embedder.texts == []

    changed = [dict(news[0], description="Scores from the football leagues.")]
    discovery.upsert("bbc-news", changed, description="Sports")
    assert found(discovery.search("football league scores", k=3))[0] == "bbc-news/get_headlines"
    assert [hit.lexical_rank for hit in discovery.search("latest", agent="bbc-news")] == [None]  # words gone

    discovery.remove("bbc-news")
    assert "bbc-news" not in {hit.agent for hit in discovery.search("football league scores", k=100)}
    assert discovery.searchable() == sum(map(len, tools.values()))


@pytest.mark.parametrize("query", [
    "Search GitHub for issues about memory leaks, then post a summary to the #eng Slack channel",
    "Find out why the api pod keeps crashing: describe it, read its logs, then restart the deployment",
    "帮我查一下上海的天气，然后推荐几道今天吃的菜",
])
def test_needs_ranked_together_rank_as_each_need_alone(index: DiscoveryIndex, query: str):
    """All needs go through each ranker in one call; every hit keeps the ranks its need has on its own."""
    hits = index.search(query, k=30)
    assert len({hit.need for hit in hits}) >= 2
    alone = {need: {f"{hit.agent}/{hit.tool}": hit for hit in index.search(need, k=200)} for need in needs(query)}
    for hit in hits:
        same = alone[hit.need][f"{hit.agent}/{hit.tool}"]
        assert (hit.lexical_rank, hit.name_rank, hit.semantic_rank) == (
            same.lexical_rank, same.name_rank, same.semantic_rank)
        assert hit.relevance == same.relevance
        assert hit.similarity == pytest.approx(same.similarity, abs=1e-5) if same.similarity else hit.similarity is None
        # a tool's relevance is its best over the needs
        assert hit.relevance == max(need_hits[key].relevance for need_hits in alone.values()
                                    if (key := f"{hit.agent}/{hit.tool}") in need_hits)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_the_top_k_is_the_head_of_a_longer_ranking_whatever_the_weights(index: DiscoveryIndex, k: int):
    """Weighing stops at the first candidate that cannot reach the top k; that must never change the top k."""
    reputations = {agent: (i % 7) / 6 for i, agent in enumerate(load()[0])}
    assessed = {"github": {"github": 1.0}, "gitlab": {"gitlab": 0.0}}
    weights = {"reputation": lambda agent, _tool: reputations.get(agent),
               "proficiency": lambda agent: assessed.get(agent, {})}
    for query in ("list open issues in the repository", "read a file, then send a message", "take a screenshot"):
        assert found(index.search(query, k=k, **weights)) == found(index.search(query, k=300, **weights))[:k]
        assert [hit.score for hit in index.search(query, k=k, **weights)] == [
            hit.score for hit in index.search(query, k=300, **weights)[:k]]
