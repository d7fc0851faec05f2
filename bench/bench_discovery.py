"""Discovery: retrieval quality on real MCP tools, then latency at 10k and 100k tools.

Run: ``.venv/bin/python bench/bench_discovery.py [sizes...]`` (default 10000 100000; ``0`` for the
quality figures alone).

**Quality.** The catalogue is ``bench/data/catalogue.json`` (the tools/list of 40 public MCP servers
from npm, extracted by ``bench/data/extract_tools.py``; some described in Chinese) plus this
repository's own agents (from their committed manifests); ``bench/data/queries.json`` holds queries
written as users write them, each labelled with the tools that answer it (2: used by the answer, 1: an
acceptable alternative). For each ranking it prints NDCG@10 (graded gains), MRR (first relevant tool
in the top 100) and Recall@10 (of the grade-2 tools), overall and by kind of query. The rankings: the
previous one (semantic only, WordLlama), BM25 alone, semantic alone with the multilingual encoder,
and the hybrid (with and without splitting a query into needs).

**Latency.** Tools are synthetic but varied (verb x noun x qualifier x domain, from a fixed seed), 50
to an agent, about half of them annotated read-only; reputation is a dict lookup, as the registry's
would be. Searches run the default (hybrid) index. Half the agents belong to one project and the rest to
ten small ones, so it also times a search inside a project of a twentieth of the tools (searched exactly)
and inside the big one (a filtered graph walk). Ordinary queries are one need; task queries have
three or four needs (``needs``), either the fixed task of earlier runs (two of its needs never change)
or needs drawn afresh for every query. For the three-need queries it prints where the CPU goes (the
encoder, each BM25 ranker, the HNSW searches, and the rest: splitting, fusion, weighing, hits), the
same with BM25's term cache emptied before every query (as right after an admission), and the floor:
the encoder alone for 1 to 4 needs, which no change to discovery can go under.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mesh import embedding
from mesh.manifest import Manifest
from mesh.registry.discovery import MAX_NEEDS, DiscoveryIndex
from mesh.registry.discovery import needs as discovery_needs

DATA = Path(__file__).resolve().parent / "data"
MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"
RANKINGS: dict[str, dict] = {
    "previous: semantic (WordLlama)": {"embedder": embedding.WORDLLAMA, "rankers": ("semantic",), "split_needs": False},
    "BM25 alone": {"rankers": ("lexical",), "split_needs": False},
    "semantic (multilingual) alone": {"rankers": ("semantic",), "split_needs": False},
    "hybrid, one need": {"split_needs": False},
    "hybrid (default)": {},
}
KINDS = ("single", "product", "cross-lingual", "multi")

SEED = 20240603
TOOLS_PER_AGENT = 50
QUERIES = 500
TASK = "{q}, then summarize recent invoices by status and send the report to the team"


def words(text: str) -> list[str]:
    return text.split()


VERBS = words(
    "get list create update delete search find fetch send sync export import validate summarize translate "
    "schedule cancel compute render convert archive approve assign upload download publish merge tag rank"
)
NOUNS = words(
    "invoice customer order ticket document passage image pet flight hotel payment user repository issue "
    "commit forecast report contract shipment product review meeting calendar email message playlist song "
    "recipe patient appointment claim policy sensor alert metric dashboard dataset model prompt"
)
ADJECTIVES = words("recent archived pending public private shared draft overdue urgent large monthly daily")
QUALIFIERS = (
    "by id",
    "for a date range",
    "in bulk",
    "matching a query",
    "for the current user",
    "with pagination",
    "as csv",
    "as pdf",
    "from a url",
    "by status",
    "for a team",
    "with full history",
)
DOMAINS = words(
    "billing crm support library weather travel git shop health insurance iot analytics music kitchen "
    "calendar mail hr legal logistics marketing"
)


def synthetic_agents(count: int, rng: random.Random) -> dict[str, list[dict]]:
    """``count`` tools spread over agents of ``TOOLS_PER_AGENT`` tools each."""
    agents: dict[str, list[dict]] = {}
    for a in range(-(-count // TOOLS_PER_AGENT)):
        domain = rng.choice(DOMAINS)
        tools = []
        for t in range(min(TOOLS_PER_AGENT, count - a * TOOLS_PER_AGENT)):
            verb, noun, adjective = rng.choice(VERBS), rng.choice(NOUNS), rng.choice(ADJECTIVES)
            qualifier, other = rng.choice(QUALIFIERS), rng.choice(NOUNS)
            tools.append(
                {
                    "name": f"{verb}_{adjective}_{noun}s_{t}",
                    "description": (
                        f"{verb.capitalize()} {adjective} {noun}s {qualifier} in the {domain} service. "
                        f"Returns the {noun} with its {other} details."
                    ),
                    "inputSchema": {"type": "object"},
                    "annotations": {"readOnlyHint": verb in {"get", "list", "search", "find", "fetch", "export"}},
                }
            )
        agents[f"{domain}_{a}"] = tools
    return agents


def queries(rng: random.Random) -> list[str]:
    return [
        f"{rng.choice(VERBS)} {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}s {rng.choice(QUALIFIERS)}"
        for _ in range(QUERIES)
    ]


def tasks(rng: random.Random, count: int) -> list[str]:
    """Task queries of ``count`` (2 to 4) needs, each need drawn afresh: "A, then B and C, then D"."""
    drawn = [queries(rng) for _ in range(count)]
    joints = [", then ", " and ", ", then "]
    texts = []
    for parts in zip(*drawn, strict=True):
        text = parts[0]
        for joint, part in zip(joints, parts[1:], strict=False):
            text += joint + part
        texts.append(text)
    return texts


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return statistics.median(samples_ms), cuts[98]


def timed(run: Callable[[str], object], texts: list) -> tuple[tuple[float, float], tuple[float, float]]:
    """(p50, p99) of wall time and of this thread's CPU time, in ms.

    Searching is single-threaded, so CPU time is the latency a query would have on an idle core; the
    gap between the two is other processes taking the cores.
    """
    for text in texts[:20]:  # warm up
        run(text)
    wall, cpu = [], []
    for text in texts:
        start, start_cpu = time.perf_counter(), time.thread_time()
        run(text)
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.thread_time() - start_cpu) * 1000)
    return percentiles(wall), percentiles(cpu)


@contextmanager
def cpu_by_part(index: DiscoveryIndex) -> Iterator[dict[str, float]]:
    """Add each part's CPU seconds to the yielded dict while searching: the encoder, each BM25 ranker
    and the HNSW searches (the parts are wrapped on this one index only, and unwrapped after)."""
    spent: dict[str, float] = defaultdict(float)
    parts = [(index.embedder, "embed", "encoder (all needs, one batch)"),
             (index._lexical, "search_many", "BM25 lexical (all needs)"),
             (index._names, "search_many", "BM25 names (all needs)")]
    parts.append((index._vectors, "search_many", "HNSW (one graph)"))

    def wrapped(call: Callable, label: str) -> Callable:
        def run(*args, **kwargs):
            start = time.thread_time()
            try:
                return call(*args, **kwargs)
            finally:
                spent[label] += time.thread_time() - start
        return run

    for owner, name, label in parts:
        setattr(owner, name, wrapped(getattr(owner, name), label))
    try:
        yield spent
    finally:
        for owner, name, _ in parts:
            vars(owner).pop(name, None)


def profile(index: DiscoveryIndex, texts: list[str], reputation: Callable, *, cold_terms: bool = False) -> str:
    """Mean CPU ms per query by part (see ``cpu_by_part``); the rest is splitting, fusion, weighing, hits."""
    total = 0.0
    with cpu_by_part(index) as spent:
        for text in texts:
            if cold_terms:
                index._lexical._impacts.clear()
                index._names._impacts.clear()
            start = time.thread_time()
            index.search(text, k=10, reputation=reputation)
            total += time.thread_time() - start
    figures = dict(spent)
    figures["rest"] = total - sum(spent.values())
    per_query = lambda seconds: seconds * 1000 / len(texts)  # noqa: E731
    return f"total {per_query(total):.2f} = " + " + ".join(f"{label} {per_query(value):.2f}"
                                                           for label, value in figures.items())


def latency(run: Callable, items: list) -> str:
    (p50, p99), (cpu50, cpu99) = timed(run, items)
    return f"p50 {p50:6.3f}  p99 {p99:6.3f} ms   (cpu p50 {cpu50:6.3f}  p99 {cpu99:6.3f} ms)"


def bench(size: int) -> list[tuple[str, str]]:
    rng = random.Random(SEED + size)
    agents = synthetic_agents(size, rng)
    names = list(agents)
    reputations = {(agent, tool["name"]): rng.random() for agent, tools in agents.items() for tool in tools}
    reputation = lambda agent, tool: reputations.get((agent, tool))  # noqa: E731
    texts = queries(rng)

    # Projects, as a shared registry has them: half the agents in one big project, the rest in ten small
    # ones (a twentieth of the tools each). A search in a project ranks inside it (``scope``).
    scopes = {name: "acme/big" if i % 2 == 0 else f"team/p{i // 2 % 10}" for i, name in enumerate(names)}
    index = DiscoveryIndex()
    start = time.perf_counter()
    index.upsert_many(agents, scopes=scopes)
    build_s = time.perf_counter() - start

    rows = [("build (bulk upsert_many)", f"{build_s:.1f} s")]
    cases: list[tuple[str, Callable[[str], object]]] = [
        ("search k=10", lambda q: index.search(q, k=10, reputation=reputation)),
        ("search k=10 read_only", lambda q: index.search(q, k=10, read_only=True, reputation=reputation)),
        ("search k=10 agent=", lambda q: index.search(q, k=10, agent=rng.choice(names), reputation=reputation)),
        ("search k=10 task of 3 needs", lambda q: index.search(TASK.format(q=q), k=10, reputation=reputation)),
        ("search k=10 in a project of 1/20", lambda q: index.search(q, k=10, scope=f"team/p{rng.randrange(10)}",
                                                                    reputation=reputation)),
        ("search k=10 in a project of 1/2", lambda q: index.search(q, k=10, scope="acme/big", reputation=reputation)),
    ]
    search = lambda q: index.search(q, k=10, reputation=reputation)  # noqa: E731
    by_needs = {count: tasks(random.Random(SEED + count), count) for count in (2, 3, 4)}
    for label, run in cases:
        rows.append((label, latency(run, texts)))
    for count in (3, 4):
        rows.append((f"search k=10 {count} needs, all drawn", latency(search, by_needs[count])))
    rows.append(("3 needs: CPU ms by part", profile(index, by_needs[3], reputation)))
    rows.append(("  the same, BM25 term cache cold", profile(index, by_needs[3], reputation, cold_terms=True)))
    needs = {1: [[text] for text in texts]}
    needs.update({count: [discovery_needs(text) for text in by_needs[count]] for count in (2, 3, 4)})
    for count in range(1, MAX_NEEDS + 1):
        rows.append((f"floor: the encoder alone, {count} need(s)", latency(index.embedder.embed, needs[count])))

    upserts = []
    for agent in names[:5]:  # the first add after a bulk build pays a one-off cost inside Faiss
        changed = [dict(tool, description=tool["description"] + " Now faster.") for tool in agents[agent]]
        start = time.perf_counter()
        index.upsert(agent, changed)
        upserts.append((time.perf_counter() - start) * 1000)
    figure = f"first {upserts[0]:.1f} ms, then median {statistics.median(upserts[1:]):.1f} ms"
    rows.append((f"re-upsert 1 agent ({TOOLS_PER_AGENT} changed)", figure))
    start = time.perf_counter()
    index.upsert(names[6], agents[names[6]])
    rows.append(("re-upsert 1 agent (unchanged)", f"{(time.perf_counter() - start) * 1000:.1f} ms"))
    start = time.perf_counter()
    index.remove(names[7])
    rows.append(("remove 1 agent", f"{(time.perf_counter() - start) * 1000:.1f} ms"))
    return rows


def catalogue() -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Every agent's tools and description: the public servers, then this repository's agents."""
    tools: dict[str, list[dict]] = {}
    descriptions: dict[str, str] = {}
    for agent in json.loads((DATA / "catalogue.json").read_text())["agents"]:
        tools[agent["agent"]] = agent["tools"]
        descriptions[agent["agent"]] = agent["description"]
    for path in sorted(MANIFESTS.glob("*.manifest.json")):
        payload = json.loads(Manifest.load(path).payload_bytes)
        tools[payload["agent"]] = [{k: v for k, v in tool.items() if k != "digest"} for tool in payload["tools"]]
        descriptions[payload["agent"]] = payload.get("description") or ""
    return tools, descriptions


def ndcg(found: list[str], relevant: dict[str, int], k: int = 10) -> float:
    gains = sum((2 ** relevant.get(tool, 0) - 1) / math.log2(rank + 2) for rank, tool in enumerate(found[:k]))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    return gains / sum((2**grade - 1) / math.log2(rank + 2) for rank, grade in enumerate(ideal))


def reciprocal_rank(found: list[str], relevant: dict[str, int]) -> float:
    return next((1.0 / rank for rank, tool in enumerate(found, 1) if tool in relevant), 0.0)


def recall(found: list[str], relevant: dict[str, int], k: int = 10) -> float:
    needed = {tool for tool, grade in relevant.items() if grade == 2}
    return len(needed & set(found[:k])) / len(needed)


def quality() -> None:
    tools, descriptions = catalogue()
    queries = json.loads((DATA / "queries.json").read_text())["queries"]
    counts = {kind: sum(q["kind"] == kind for q in queries) for kind in KINDS}
    print(f"\nretrieval quality: {sum(map(len, tools.values()))} tools of {len(tools)} agents, {len(queries)} queries "
          f"({', '.join(f'{n} {kind}' for kind, n in counts.items())})")
    header = " ".join(f"{kind:>13}" for kind in KINDS)
    print(f"  {'ranking':<32} {'NDCG@10':>7} {'MRR':>6} {'R@10':>6}   NDCG@10 by kind: {header}")
    for label, options in RANKINGS.items():
        index = DiscoveryIndex(**options)
        index.upsert_many(tools, descriptions=descriptions)
        rows = []
        for query in queries:
            found = [f"{hit.agent}/{hit.tool}" for hit in index.search(query["query"], k=100)]
            rows.append((query["kind"], ndcg(found, query["relevant"]), reciprocal_rank(found, query["relevant"]),
                         recall(found, query["relevant"])))
        mean = [statistics.fmean(row[i] for row in rows) for i in (1, 2, 3)]
        by_kind = [statistics.fmean(row[1] for row in rows if row[0] == kind) for kind in KINDS]
        kinds = " ".join(f"{value:13.3f}" for value in by_kind)
        print(f"  {label:<32} {mean[0]:7.3f} {mean[1]:6.3f} {mean[2]:6.3f}   {'':16} {kinds}")


def main(argv: list[str]) -> None:
    sizes = [int(arg) for arg in argv if int(arg) > 0] if argv else [10_000, 100_000]
    embedding.model()  # load the weights outside every timing
    embedding.MULTILINGUAL.model()
    quality()
    for size in sizes:
        print(f"\n{size:,} tools, {QUERIES} queries")
        for label, figure in bench(size):
            print(f"  {label:<34} {figure}")


if __name__ == "__main__":
    main(sys.argv[1:])
