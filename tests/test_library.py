"""The librarian's parts with the real things: wordllama embeddings, Faiss, zstd dictionaries, SQLite."""

from __future__ import annotations

import os
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import zstandard

from mesh import embedding
from mesh.chunks import Chunk, ChunkStore, split_text
from mesh.library import Library
from mesh.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent

DOCUMENTS = {
    "README.md": """# Field handbook

This handbook collects practical notes from the club's members. Each page covers one hobby; search it
by describing what you want to do.
""",
    "docs/gardening.md": """# Gardening

## Watering tomatoes

Tomato plants need deep, regular watering: soak the soil around the roots two or three times a week
rather than sprinkling the leaves every day. Mulch with straw to keep the soil moist, and water in the
morning so the foliage dries before evening, which keeps blight and mildew away.

## Compost and soil

Good soil is crumbly and dark. Turn the compost heap every few weeks, mix green clippings with brown
leaves, and dig the finished compost into the vegetable beds in spring before planting seedlings.
""",
    "docs/astronomy.md": """# Astronomy

## Observing Jupiter

Through a small telescope Jupiter shows its cloud belts and the four Galilean moons: Io, Europa,
Ganymede and Callisto. Their positions change every night as they orbit the planet. A magnification of
about one hundred is enough; steady air matters more than the size of the eyepiece.

## Galaxies and nebulae

Faint galaxies and nebulae need a dark sky far from city lights, a wide aperture and patience while
your eyes adapt to the darkness for twenty minutes or more.
""",
    "docs/baking.rst": """Baking bread
============

Sourdough starter
-----------------

Feed the starter with equal weights of flour and water each day until it doubles within six hours.
A lively starter smells pleasantly sour and is full of bubbles.

Oven and crust
--------------

Bake the loaf in a preheated oven at a high temperature inside a covered cast iron pot, then remove
the lid to brown the crust. Let the bread cool before slicing it.
""",
    "docs/cycling.txt": """Bicycle maintenance

Keep the chain clean and lubricated, check the tyre pressure before every ride, and adjust the brake
pads when they squeal or the levers pull too far. Replace a stretched chain before it wears the gears.
""",
    "docs/.drafts/unfinished.md": "# Hidden\n\nA draft in a hidden folder is not indexed.\n",
    "docs/diagram.svg": "<svg/>",
}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    for name, text in DOCUMENTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture
def embedded(monkeypatch) -> list[str]:
    """Every text the library embeds (the real model still does the work)."""
    seen: list[str] = []
    real = embedding.embed

    def counting(texts: list[str]):
        seen.extend(texts)
        return real(texts)

    monkeypatch.setattr(embedding, "embed", counting)
    return seen


@pytest.fixture
def library(workspace: Path, tmp_path: Path):
    library = Library.open(workspace, tmp_path / "state")
    library.refresh()
    yield library
    library.close()


def test_embeddings_are_unit_rows_in_input_order():
    texts = ["a long passage about tomatoes, compost and watering the garden beds " * 8, "telescopes", ""]
    vectors = embedding.embed(texts)
    assert vectors.shape == (3, embedding.DIMENSION) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors[:2], axis=1), 1.0, atol=1e-5)
    assert not vectors[2].any()  # nothing to embed: the zero vector, not NaNs
    alone = embedding.embed([texts[1]])[0]
    assert np.allclose(vectors[1], alone, atol=1e-5)  # batching (sorted by length) keeps the order


def test_indexes_readme_and_docs_text_files(library: Library):
    documents = {info.document: info.chunks for info in library.documents()}
    assert set(documents) == {
        "README.md",
        "docs/astronomy.md",
        "docs/baking.rst",
        "docs/cycling.txt",
        "docs/gardening.md",
    }
    assert all(count >= 1 for count in documents.values())


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("how often should I water my tomato plants", "docs/gardening.md"),
        ("which moons can I see around Jupiter with a telescope", "docs/astronomy.md"),
        ("keeping a sourdough starter alive and baking a loaf", "docs/baking.rst"),
        ("my bike chain and brakes need care", "docs/cycling.txt"),
    ],
)
def test_a_query_on_a_distinct_topic_ranks_its_document_first(library: Library, query: str, expected: str):
    hits = library.search(query, 5)
    assert hits[0].document == expected
    assert hits[0].score > hits[-1].score


def test_passages_point_at_readable_chunks(library: Library):
    hit = library.search("cloud belts of the planet", 1)[0]
    assert (hit.document, hit.heading) == ("docs/astronomy.md", "Astronomy > Observing Jupiter")
    chunk = library.read(hit.document, hit.chunk)
    assert "Ganymede" in chunk.text and chunk.heading == hit.heading
    whole = library.read("docs/baking.rst")  # whole document: exactly the file, rebuilt from its chunks
    assert whole.chunk is None and whole.text == DOCUMENTS["docs/baking.rst"]
    assert whole.chunks == len(library.store.chunks("docs/baking.rst"))


def test_bad_input_names_the_problem(library: Library, workspace: Path, tmp_path: Path):
    with pytest.raises(ValueError, match=r"unknown document 'docs/nowhere\.md'.*docs/gardening\.md"):
        library.read("docs/nowhere.md")
    chunks = len(library.store.chunks("docs/gardening.md"))
    with pytest.raises(ValueError, match=rf"docs/gardening\.md has chunks 0 to {chunks - 1}; there is no chunk 99"):
        library.read("./docs/gardening.md", 99)
    for k in (0, 51):
        with pytest.raises(ValueError, match=rf"k must be between 1 and 50, got {k}"):
            library.search("tomatoes", k)
    with pytest.raises(ValueError, match="query is empty"):
        library.search("   ")
    with pytest.raises(ValueError, match=r"'\.\./elsewhere' is outside the workspace"):
        Library.open(workspace, tmp_path / "other", ["../elsewhere"])


def test_refresh_reindexes_only_what_changed(library: Library, workspace: Path, embedded: list[str]):
    astronomy = workspace / "docs/astronomy.md"
    astronomy.write_text(
        DOCUMENTS["docs/astronomy.md"]
        + "\n## Beekeeping under the stars\n\nThe club's hives sit beside the observatory: inspect the queen, "
        "harvest honey from the frames in late summer and leave the bees enough stores for winter.\n"
    )
    report = library.refresh()
    assert (report.updated, report.added, report.removed) == (["docs/astronomy.md"], [], [])
    assert embedded and all("Gardening" not in text for text in embedded)  # only the changed file

    hit = library.search("harvesting honey from a beehive", 1)[0]
    assert hit.document == "docs/astronomy.md" and "honey" in library.read(hit.document, hit.chunk).text
    assert len(library.index) == sum(info.chunks for info in library.documents())  # old vectors gone

    embedded.clear()
    os.utime(workspace / "docs/gardening.md", ns=(1, 1))  # new mtime, same bytes: re-stamped only
    (workspace / "docs/cycling.txt").unlink()
    report = library.refresh()
    assert "docs/gardening.md" in report.unchanged and report.removed == ["docs/cycling.txt"]
    assert embedded == []
    assert all(hit.document != "docs/cycling.txt" for hit in library.search("bicycle chain", 50))


def test_restart_reads_stored_vectors_instead_of_embedding(workspace: Path, tmp_path: Path, embedded: list[str]):
    with_state = tmp_path / "state"
    first = Library.open(workspace, with_state)
    first.refresh()
    count = len(first.index)
    first.close()
    embedded.clear()

    again = Library.open(workspace, with_state)
    report = again.refresh()
    assert report.added == report.updated == [] and len(report.unchanged) == 5
    assert embedded == [] and len(again.index) == count
    assert again.search("the moons of Jupiter", 1)[0].document == "docs/astronomy.md"
    again.close()


# -- chunks ----------------------------------------------------------------------------------------------


def tool_page(rng: random.Random, number: int) -> str:
    """A made-up but realistically repetitive document: the kind of text a dictionary learns."""
    agent = rng.choice(["librarian", "sandbox", "scheduler", "billing", "weather", "translator"])
    verb = rng.choice(["find", "list", "create", "update", "delete", "summarize", "translate"])
    noun = rng.choice(["passage", "invoice", "forecast", "meeting", "document", "customer", "ticket"])
    scope = "write" if verb in ("create", "update", "delete") else "read"
    return (
        f"## {agent}.{verb}_{noun}\n\nThe `{verb}_{noun}` tool of the {agent} agent will {verb} a {noun} "
        f"for the caller (release {number % 9}.{number % 4}). Arguments: `{noun}_id` (string, required), "
        f"`limit` (integer, 1 to {rng.randint(10, 500)}, default {rng.randint(1, 10)}). It returns a JSON "
        f"object with the fields `id`, `{noun}`, `created_at` and `score`, and raises a tool error naming "
        f"the problem when the {noun} does not exist. Scopes: `{agent}:{scope}`. "
        f"Median latency {rng.randint(2, 90)} ms over {rng.randint(100, 9000)} calls.\n"
    )


def test_dictionary_is_trained_used_and_versioned(tmp_path: Path):
    rng = random.Random(3)
    pages = [tool_page(rng, n) for n in range(120)]
    store = ChunkStore(tmp_path / "chunks.sqlite3", train_at=80)
    for n, page in enumerate(pages[:60]):
        store.put(f"page{n}.md", [Chunk(page, "tools")], sha256=str(n), mtime_ns=n, size=len(page))
    plain = store.stats()
    assert store.dictionary_id == 0 and plain.with_dictionary == 0 and plain.ratio > 1

    for n, page in enumerate(pages[60:], start=60):
        store.put(f"page{n}.md", [Chunk(page, "tools")], sha256=str(n), mtime_ns=n, size=len(page))
    trained = store.stats()
    assert store.dictionary_id != 0 and trained.dictionary_version == 1
    assert trained.with_dictionary == trained.chunks == 120  # earlier rows were recompressed too
    assert trained.ratio > 1.5 * plain.ratio
    with sqlite3.connect(store.path) as db:
        frames = [row[0] for row in db.execute("SELECT data FROM chunks")]
    assert {zstandard.get_frame_parameters(frame).dict_id for frame in frames} == {store.dictionary_id}
    assert [c.text for c in store.chunks("page7.md")] == [pages[7]]

    first_id = store.dictionary_id
    assert store.train_dictionary() == 2 and store.dictionary_id != first_id
    assert store.stats().dictionary_version == 2
    assert [c.text for c in store.chunks("page99.md")] == [pages[99]]
    store.close()
    reopened = ChunkStore(tmp_path / "chunks.sqlite3", train_at=80)  # the version survives a restart
    assert reopened.dictionary_id == store.dictionary_id
    assert reopened.chunk_at("page0.md", 0).text == pages[0]
    reopened.close()


def test_split_text_keeps_the_text_and_follows_headings():
    document = (
        "# Guide\n\nShort intro.\n\n## Install\n\n" + "Run the installer and wait. " * 120 + "\n\n"
        "## Use\n\n```\ncode block\n\nwith a blank line\n```\n\nThen use it.\n"
    )
    chunks = split_text(document, max_words=100, min_words=20)
    assert "".join(chunk.text for chunk in chunks) == document
    assert chunks[0].heading == "Guide" and chunks[0].text.startswith("# Guide\n\nShort intro.\n\n## Install")
    assert all(len(chunk.text.split()) <= 120 for chunk in chunks)
    assert chunks[-1].heading == "Guide > Use" and "code block\n\nwith a blank line" in chunks[-1].text


# -- the agent -------------------------------------------------------------------------------------------


@pytest.fixture
async def librarian(workspace: Path):
    """The repository's librarian agent, loaded from a workspace the way `mesh agent run` loads it."""
    (workspace / "agents").mkdir()
    (workspace / "agents/librarian.py").write_text((REPO / "agents/librarian.py").read_text())
    (workspace / "registry").mkdir()
    (workspace / "registry/registry.toml").write_text('[agents.librarian]\npaths = ["docs"]\n')
    mesh_workspace = Workspace(workspace)
    agent = mesh_workspace.agent("librarian")
    await agent.start(mesh_workspace.agent_context("librarian"))
    return agent


async def test_librarian_agent_serves_the_library(librarian):
    tools = {tool["name"]: tool for tool in await librarian.describe()}
    assert set(tools) == {"search", "read", "list_documents"}
    assert all(tool["annotations"]["readOnlyHint"] for tool in tools.values())
    assert librarian.scopes() == {name: ["docs:read"] for name in tools}
    assert tools["search"]["inputSchema"]["properties"]["k"]["maximum"] == 50

    server = librarian.build_server()
    listed = await server.call_tool("list_documents", {})
    assert {d["document"] for d in listed.structured_content["result"]} == {
        "docs/astronomy.md",
        "docs/baking.rst",
        "docs/cycling.txt",
        "docs/gardening.md",
    }  # settings narrowed the paths: no README
    found = await server.call_tool("search", {"query": "sourdough bread", "k": 2})
    assert found.structured_content["result"][0]["document"] == "docs/baking.rst"


async def test_librarian_errors_reach_the_client_with_their_message(librarian):
    """The agent contract: a ValueError from a tool becomes an MCP tool error carrying its message."""
    with pytest.raises(Exception, match=r"unknown document 'nowhere\.md'"):
        await librarian.build_server().call_tool("read", {"document": "nowhere.md"})
