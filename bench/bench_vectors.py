"""Retrieval building blocks: VectorIndex latency, embedding throughput, ChunkStore compression.

Run: ``.venv/bin/python bench/bench_vectors.py [sizes...]`` (default 10000 100000). Prints figures only.

- Search: synthetic 256-d unit vectors drawn around 2,000 random centres (embeddings of real text are
  clustered, not uniform), 500 queries that are perturbed stored vectors (nearest cosine ≈ 0.86),
  ``k=10``, one query at a time as discovery does. Recall is measured against an exact flat index.
- Embedding: sentences of this repository's text (and the design notes beside it), embedded in batches.
- Compression: this repository's text files cut by ``split_text``; without a dictionary, then with one
  trained on half of the chunks and measured on the other half (held out), and on everything. The
  repository is small, so the same is repeated on the package descriptions installed in the virtualenv.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mesh import embedding
from mesh.chunks import Chunk, ChunkStore, split_text
from mesh.vectors import VectorIndex

REPO = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".md", ".rst", ".txt", ".py", ".toml", ".rego", ".yaml", ".yml"}
QUERIES = 500
K = 10


def clustered_vectors(n: int, rng: np.random.Generator, centres: int = 2000) -> np.ndarray:
    centre = rng.standard_normal((centres, embedding.DIMENSION)).astype(np.float32)
    rows = centre[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, embedding.DIMENSION)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def percentiles(samples: list[float]) -> str:
    p50, p99 = np.percentile(np.array(samples) * 1000, [50, 99])
    return f"p50 {p50:6.3f} ms  p99 {p99:6.3f} ms"


def bench_search(n: int) -> None:
    rng = np.random.default_rng(n)
    vectors = clustered_vectors(n, rng)
    ids = list(range(n))
    picks = rng.integers(0, n, QUERIES)
    noise = 0.6 / np.sqrt(embedding.DIMENSION)  # a query's nearest stored vector sits near cosine 0.86
    queries = vectors[picks] + noise * rng.standard_normal((QUERIES, embedding.DIMENSION)).astype(np.float32)

    exact = VectorIndex(embedding.DIMENSION, exact_below=n + 1)
    exact.add(ids, vectors)
    truth = [[hit for hit, _ in exact.search(query, K)] for query in queries]

    for label, index in (("default", VectorIndex(embedding.DIMENSION)), ("flat", exact)):
        if label == "default":
            started = time.perf_counter()
            index.add(ids, vectors)
            build = time.perf_counter() - started
        timings, found, first = [], 0, 0
        for query, expected in zip(queries, truth, strict=True):
            started = time.perf_counter()
            hits = [hit for hit, _ in index.search(query, K)]
            timings.append(time.perf_counter() - started)
            found += len(set(expected) & set(hits))
            first += hits[0] == expected[0]
        kind = "flat" if index.is_exact else "HNSW"
        extra = f"  build {build:4.1f} s" if label == "default" else ""
        print(
            f"  {n:>7,} vectors  {kind:<4}  {percentiles(timings)}  recall@1 {first / QUERIES:.3f}"
            f"  recall@{K} {found / (K * QUERIES):.3f}{extra}"
        )
        if label == "default" and index.is_exact:
            break  # the default already is the flat index


def repo_text_files() -> list[Path]:
    skip = {".venv", ".git", ".mesh", "__pycache__", "node_modules"}
    files = [
        path
        for path in sorted(REPO.rglob("*"))
        if path.is_file() and path.suffix in TEXT_SUFFIXES and not skip & set(path.relative_to(REPO).parts)
    ]
    shared = REPO.parent / "shared"
    return files + sorted(shared.glob("*.md"))


def installed_descriptions() -> list[Path]:
    return sorted((REPO / ".venv").glob("lib/python3*/site-packages/*.dist-info/METADATA"))


def bench_embedding(files: list[Path]) -> None:
    text = " ".join(path.read_text(errors="replace") for path in files)
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n{2,}", text) if len(s.split()) >= 3]
    sentences = (sentences * (1 + 5000 // max(1, len(sentences))))[:5000]
    started = time.perf_counter()
    embedding.embed(["warm up"])
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    embedding.embed(sentences)
    elapsed = time.perf_counter() - started
    words = sum(len(s.split()) for s in sentences) / len(sentences)
    print(
        f"  model load {loaded:.2f} s; {len(sentences):,} sentences (mean {words:.0f} words): "
        f"{len(sentences) / elapsed:,.0f} sentences/s"
    )


def bench_compression(label: str, files: list[Path]) -> None:
    chunks = [
        chunk.text for path in files for chunk in split_text(path.read_text(errors="replace")) if chunk.text.strip()
    ]
    half = len(chunks) // 2
    raw_kb = sum(len(c.encode()) for c in chunks) / 1024
    with tempfile.TemporaryDirectory() as folder:
        plain = ChunkStore(Path(folder) / "plain.sqlite3", train_at=10**9)
        plain.put("all", [Chunk(text) for text in chunks], sha256="", mtime_ns=0, size=0)
        without = plain.stats()
        plain.close()

        store = ChunkStore(Path(folder) / "dict.sqlite3", train_at=half)
        store.put("train", [Chunk(text) for text in chunks[:half]], sha256="", mtime_ns=0, size=0)
        trained_half = store.stats()
        store.put("held-out", [Chunk(text) for text in chunks[half:]], sha256="", mtime_ns=0, size=0)
        after = store.stats()
        held_out = (after.raw_bytes - trained_half.raw_bytes) / (after.stored_bytes - trained_half.stored_bytes)
        store.train_dictionary()  # now trained on everything
        everything = store.stats()
        store.close()
    print(f"  {label}: {len(chunks):,} chunks, {raw_kb:,.0f} KB, mean {raw_kb * 1024 / len(chunks):,.0f} B")
    print(f"    no dictionary            {without.ratio:4.2f}x")
    print(
        f"    dictionary, held out     {held_out:4.2f}x  (trained on {half:,} chunks, "
        f"{trained_half.dictionary_bytes / 1024:,.0f} KB dictionary)"
    )
    print(
        f"    dictionary, all chunks   {everything.ratio:4.2f}x  ({everything.ratio_with_dictionary:4.2f}x "
        f"counting the {everything.dictionary_bytes / 1024:,.0f} KB dictionary)"
    )


def main(argv: list[str]) -> None:
    sizes = [int(arg) for arg in argv] or [10_000, 100_000]
    print(f"VectorIndex search, k={K}, {QUERIES} single queries, 256-d")
    for n in sizes:
        bench_search(n)
    files = repo_text_files()
    print("Embedding (wordllama, 256-d)")
    bench_embedding(files)
    print("ChunkStore compression (zstd level 3, one frame per chunk)")
    bench_compression("repository text", files)
    bench_compression("installed package descriptions", installed_descriptions())


if __name__ == "__main__":
    main(sys.argv[1:])
