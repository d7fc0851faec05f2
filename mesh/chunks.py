"""Text chunks: how a document is cut into passages (``split_text``), and where they are kept (``ChunkStore``).

A chunk is an exact slice of its document, cut at paragraph boundaries and started afresh at headings
(markdown ``#``, setext and reStructuredText underlines), so the chunks of a document concatenate back
to the document itself and nothing needs storing twice.

The store keeps them in SQLite, compressed with zstd. Short records barely compress on their own (≈1.8×);
a dictionary trained on the corpus itself brings them to ≈3.5–4× while every record stays its own frame,
readable alone. Until ``train_at`` chunks exist there is nothing worth training on, so chunks are stored
without a dictionary (``dict_id`` 0); the first time the threshold is reached a dictionary is trained and
every row is recompressed with it. Dictionaries are versioned: each zstd frame names its dictionary's id,
and each row records it, so a retrained dictionary never makes an old row unreadable.

Each chunk may carry its embedding vector (float32), so that a restart can rebuild a vector index
without re-embedding anything.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

MAX_WORDS = 250
MIN_WORDS = 50
_ATX = re.compile(r"^(#{1,6})\s+(.*?)[\s#]*$")
_UNDERLINE = re.compile(r"^([=\-~^\"'`*+#:.])\1+\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_WORD = re.compile(r"\S+\s*")

SCHEMA = """
CREATE TABLE IF NOT EXISTS dictionaries (
    version INTEGER PRIMARY KEY,
    dict_id INTEGER NOT NULL UNIQUE,      -- zstd's id, written into every frame compressed with it
    data BLOB NOT NULL,
    samples INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL,
    indexed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    heading TEXT NOT NULL,
    dict_id INTEGER NOT NULL,             -- 0: compressed without a dictionary
    raw_size INTEGER NOT NULL,
    data BLOB NOT NULL,
    vector BLOB,
    UNIQUE (document_id, number)
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Chunk:
    """A chunk to store: its text, the heading it sits under, and optionally its embedding."""

    text: str
    heading: str = ""
    vector: np.ndarray | None = None


def split_text(text: str, *, max_words: int = MAX_WORDS, min_words: int = MIN_WORDS) -> list[Chunk]:
    """Cut a document into chunks of at most about ``max_words`` words, each under its heading path.

    A heading starts a new chunk unless the current one is still shorter than ``min_words`` (a title
    and its one-line intro stay with what follows); a paragraph longer than ``max_words`` is cut at
    line, then word, boundaries (its first piece keeps a short lead-in such as the heading before it).
    ``"".join(chunk.text for chunk in split_text(t)) == t`` always holds.
    """
    chunks: list[Chunk] = []
    trail: list[tuple[int, str]] = []  # (level, title) of the headings in effect
    start = end = words = 0
    heading = ""
    headings_only = True  # the current chunk holds nothing but headings (so far)

    def flush() -> None:
        nonlocal start, words, heading, headings_only
        if end > start:
            chunks.append(Chunk(text[start:end], heading))
        start, words, headings_only = end, 0, True
        heading = " > ".join(title for _, title in trail)

    for block_start, block_end in _blocks(text):
        block = text[block_start:block_end]
        found = _heading(block)
        if found:
            if words >= min_words:
                flush()
            level, title = found
            while trail and trail[-1][0] >= level:
                trail.pop()
            trail.append((level, title))
            if headings_only:  # "# Title" then "## Section": the chunk is about the section
                heading = " > ".join(title for _, title in trail)
        size = len(block.split())
        if size > max_words:
            if words >= min_words:
                flush()
            *pieces, (last_start, last_end) = _cut(text, block_start, block_end, max_words)
            for _, piece_end in pieces:
                end = piece_end
                flush()
            end, words = last_end, len(text[last_start:last_end].split())
        else:
            if words + size > max_words and words >= min_words:
                flush()
            end, words = block_end, words + size
        headings_only = headings_only and (found is not None or not block.strip())
    flush()
    return chunks


def _blocks(text: str) -> list[tuple[int, int]]:
    """Paragraph spans (each with the blank lines after it); fenced code is never split."""
    spans: list[tuple[int, int]] = []
    start = offset = 0
    in_fence = previous_blank = False
    for line in text.splitlines(keepends=True):
        blank = not line.strip()
        if not blank and previous_blank and not in_fence and offset > start:
            spans.append((start, offset))
            start = offset
        if _FENCE.match(line):
            in_fence = not in_fence
        previous_blank = blank
        offset += len(line)
    if offset > start:
        spans.append((start, offset))
    return spans


def _heading(block: str) -> tuple[int, str] | None:
    """(level, title) when a paragraph opens with a heading: ``# md``, setext or reST (over/under)lined."""
    lines = block.splitlines()[:3]
    if not lines:
        return None
    atx = _ATX.match(lines[0])
    if atx:
        return len(atx.group(1)), atx.group(2).strip()
    if len(lines) >= 3 and _UNDERLINE.match(lines[0]) and _UNDERLINE.match(lines[2]) and lines[1].strip():
        return 1, lines[1].strip()
    if len(lines) >= 2 and lines[0].strip() and not _UNDERLINE.match(lines[0]):
        underline = _UNDERLINE.match(lines[1])
        if underline and len(lines[1].strip()) >= min(3, len(lines[0].strip())):
            return {"=": 1, "-": 2}.get(underline.group(1), 3), lines[0].strip()
    return None


def _cut(text: str, start: int, end: int, max_words: int) -> list[tuple[int, int]]:
    """Spans of at most ``max_words`` words covering ``text[start:end]``, cut at words (lines when possible)."""
    spans: list[tuple[int, int]] = []
    piece_start, words = start, 0
    line_cut, line_words = None, 0  # the last line end in the current piece, and the words before it
    for match in _WORD.finditer(text, start, end):
        if words == max_words:
            if line_cut is not None and line_words * 2 >= max_words:
                cut, words = line_cut, words - line_words
            else:
                cut, words = match.start(), 0
            spans.append((piece_start, cut))
            piece_start, line_cut = cut, None
        words += 1
        if "\n" in match.group():
            line_cut, line_words = match.end(), words
    spans.append((piece_start, end))
    return spans


@dataclass(frozen=True)
class StoredChunk:
    id: int
    document: str
    number: int
    heading: str
    text: str


@dataclass(frozen=True)
class Document:
    path: str
    sha256: str
    mtime_ns: int
    size: int
    chunks: int


@dataclass(frozen=True)
class CompressionStats:
    chunks: int
    with_dictionary: int
    raw_bytes: int
    stored_bytes: int
    dictionary_bytes: int
    dictionary_version: int | None

    @property
    def ratio(self) -> float:
        """Raw chunk bytes over stored chunk bytes (the dictionary itself not counted)."""
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 1.0

    @property
    def ratio_with_dictionary(self) -> float:
        """The same, charging the dictionary's own size to the store."""
        stored = self.stored_bytes + self.dictionary_bytes
        return self.raw_bytes / stored if stored else 1.0


class ChunkStore:
    """Documents and their compressed chunks in one SQLite file."""

    def __init__(
        self,
        path: str | Path,
        *,
        train_at: int = 500,
        dict_size: int = 110 * 1024,
        level: int = 3,
        max_samples: int = 2000,
    ) -> None:
        self.path = Path(path)
        self.train_at = train_at
        self.dict_size = dict_size
        self.level = level
        self.max_samples = max_samples
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.executescript(SCHEMA)
        self._compressors: dict[int, zstandard.ZstdCompressor] = {}
        self._decompressors: dict[int, zstandard.ZstdDecompressor] = {}
        self._current_dict_id = self._latest_dict_id()
        self._failed_training_at = 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- documents ------------------------------------------------------------------------------------

    def document(self, path: str) -> Document | None:
        rows = self._documents("WHERE d.path = ?", (path,))
        return rows[0] if rows else None

    def documents(self) -> list[Document]:
        return self._documents("", ())

    def put(self, path: str, chunks: Sequence[Chunk], *, sha256: str, mtime_ns: int, size: int) -> list[int]:
        """Store (or replace) a document's chunks, numbered from 0; returns their ids in order."""
        with self._lock, self._transaction():
            self._conn.execute("DELETE FROM documents WHERE path = ?", (path,))
            document_id = self._conn.execute(
                "INSERT INTO documents (path, sha256, mtime_ns, size, indexed) VALUES (?, ?, ?, ?, ?)",
                (path, sha256, mtime_ns, size, time.time()),
            ).lastrowid
            ids = []
            for number, chunk in enumerate(chunks):
                raw = chunk.text.encode()
                vector = None if chunk.vector is None else np.asarray(chunk.vector, np.float32).tobytes()
                ids.append(
                    self._conn.execute(
                        "INSERT INTO chunks (document_id, number, heading, dict_id, raw_size, data, vector)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            document_id,
                            number,
                            chunk.heading,
                            self._current_dict_id,
                            len(raw),
                            self._compress(raw),
                            vector,
                        ),
                    ).lastrowid
                )
        self._maybe_train()
        return ids

    def touch(self, path: str, *, mtime_ns: int, size: int) -> None:
        """Record a new stat for a document whose content did not change."""
        with self._lock, self._transaction():
            self._conn.execute("UPDATE documents SET mtime_ns = ?, size = ? WHERE path = ?", (mtime_ns, size, path))

    def delete(self, path: str) -> list[int]:
        """Forget a document; returns the ids of the chunks that went with it."""
        with self._lock, self._transaction():
            ids = self.chunk_ids(path)
            self._conn.execute("DELETE FROM documents WHERE path = ?", (path,))
        return ids

    # -- chunks ---------------------------------------------------------------------------------------

    def chunk(self, chunk_id: int) -> StoredChunk | None:
        rows = self._chunks("WHERE c.id = ?", (chunk_id,))
        return rows[0] if rows else None

    def chunk_at(self, path: str, number: int) -> StoredChunk | None:
        rows = self._chunks("WHERE d.path = ? AND c.number = ?", (path, number))
        return rows[0] if rows else None

    def chunks(self, path: str) -> list[StoredChunk]:
        """All of a document's chunks, in order."""
        return self._chunks("WHERE d.path = ? ORDER BY c.number", (path,))

    def chunk_ids(self, path: str) -> list[int]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path = ? ORDER BY c.number",
                (path,),
            ).fetchall()
        return [row[0] for row in rows]

    def vectors(self) -> tuple[list[int], np.ndarray | None]:
        """Ids and stored vectors of every chunk that has one (``None`` when none has)."""
        with self._lock:
            rows = self._conn.execute("SELECT id, vector FROM chunks WHERE vector IS NOT NULL").fetchall()
        if not rows:
            return [], None
        return [row[0] for row in rows], np.vstack([np.frombuffer(row[1], np.float32) for row in rows])

    def set_vectors(self, ids: Sequence[int], vectors: np.ndarray) -> None:
        with self._lock, self._transaction():
            self._conn.executemany(
                "UPDATE chunks SET vector = ? WHERE id = ?",
                [(np.asarray(v, np.float32).tobytes(), int(i)) for i, v in zip(ids, vectors, strict=True)],
            )

    def all_chunks(self) -> list[StoredChunk]:
        return self._chunks("ORDER BY c.id", ())

    # -- metadata -------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- compression ----------------------------------------------------------------------------------

    def train_dictionary(self) -> int:
        """Train a new dictionary version on the stored chunks and recompress every row with it.

        Returns the new version. Older versions are dropped once no row uses them.
        """
        with self._lock:
            rows = self._conn.execute("SELECT dict_id, data FROM chunks ORDER BY id").fetchall()
            if not rows:
                raise ValueError("no chunks to train a dictionary on")
            step = max(1, len(rows) // self.max_samples)
            samples = [self._decompress(dict_id, data) for dict_id, data in rows[::step]]
            size = max(1024, min(self.dict_size, sum(map(len, samples)) // 4))
            trained = zstandard.train_dictionary(size, samples, level=self.level)
            with self._transaction():
                version = self._conn.execute(
                    "INSERT INTO dictionaries (dict_id, data, samples, created) VALUES (?, ?, ?, ?)",
                    (trained.dict_id(), trained.as_bytes(), len(samples), time.time()),
                ).lastrowid
            self._current_dict_id = trained.dict_id()
            self.recompress()
            return version

    def recompress(self) -> int:
        """Rewrite rows not yet compressed with the current dictionary; returns how many were rewritten."""
        with self._lock:
            stale = self._conn.execute(
                "SELECT id, dict_id, data FROM chunks WHERE dict_id != ?", (self._current_dict_id,)
            ).fetchall()
            with self._transaction():
                self._conn.executemany(
                    "UPDATE chunks SET dict_id = ?, data = ? WHERE id = ?",
                    [
                        (self._current_dict_id, self._compress(self._decompress(dict_id, data)), id_)
                        for id_, dict_id, data in stale
                    ],
                )
                self._conn.execute(
                    "DELETE FROM dictionaries WHERE dict_id != ? AND dict_id NOT IN (SELECT dict_id FROM chunks)",
                    (self._current_dict_id,),
                )
            return len(stale)

    def stats(self) -> CompressionStats:
        with self._lock:
            count, with_dict, raw, stored = self._conn.execute(
                "SELECT count(*), coalesce(sum(dict_id != 0), 0), coalesce(sum(raw_size), 0),"
                " coalesce(sum(length(data)), 0) FROM chunks"
            ).fetchone()
            row = self._conn.execute(
                "SELECT version, length(data) FROM dictionaries WHERE dict_id = ?", (self._current_dict_id,)
            ).fetchone()
        return CompressionStats(
            chunks=count,
            with_dictionary=with_dict,
            raw_bytes=raw,
            stored_bytes=stored,
            dictionary_bytes=row[1] if row else 0,
            dictionary_version=row[0] if row else None,
        )

    @property
    def dictionary_id(self) -> int:
        """zstd id of the dictionary new chunks are compressed with (0: none yet)."""
        return self._current_dict_id

    # -- internals ------------------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        """The connection runs in autocommit mode; ``with`` on this wraps a block in BEGIN/COMMIT."""
        return _Transaction(self._conn)

    def _maybe_train(self) -> None:
        """Train the first dictionary once ``train_at`` chunks exist (retrying at twice the count on failure)."""
        count = self._count()
        if self._current_dict_id or count < max(self.train_at, 2 * self._failed_training_at):
            return
        try:
            self.train_dictionary()
        except zstandard.ZstdError:
            self._failed_training_at = count  # too little material; chunks stay plainly compressed

    def _count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM chunks").fetchone()[0]

    def _latest_dict_id(self) -> int:
        row = self._conn.execute("SELECT dict_id FROM dictionaries ORDER BY version DESC LIMIT 1").fetchone()
        return row[0] if row else 0

    def _dictionary(self, dict_id: int) -> zstandard.ZstdCompressionDict:
        row = self._conn.execute("SELECT data FROM dictionaries WHERE dict_id = ?", (dict_id,)).fetchone()
        if row is None:
            raise LookupError(f"zstd dictionary {dict_id} is missing from {self.path}")
        return zstandard.ZstdCompressionDict(row[0])

    def _compress(self, raw: bytes) -> bytes:
        dict_id = self._current_dict_id
        if dict_id not in self._compressors:
            dictionary = self._dictionary(dict_id) if dict_id else None
            self._compressors[dict_id] = zstandard.ZstdCompressor(level=self.level, dict_data=dictionary)
        return self._compressors[dict_id].compress(raw)

    def _decompress(self, dict_id: int, data: bytes) -> bytes:
        if dict_id not in self._decompressors:
            dictionary = self._dictionary(dict_id) if dict_id else None
            self._decompressors[dict_id] = zstandard.ZstdDecompressor(dict_data=dictionary)
        return self._decompressors[dict_id].decompress(data)

    def _documents(self, where: str, args: tuple) -> list[Document]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT d.path, d.sha256, d.mtime_ns, d.size,"
                " (SELECT count(*) FROM chunks c WHERE c.document_id = d.id)"
                f" FROM documents d {where} ORDER BY d.path",
                args,
            ).fetchall()
        return [Document(*row) for row in rows]

    def _chunks(self, where: str, args: tuple) -> list[StoredChunk]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT c.id, d.path, c.number, c.heading, c.dict_id, c.data"
                f" FROM chunks c JOIN documents d ON d.id = c.document_id {where}",
                args,
            ).fetchall()
            return [
                StoredChunk(id_, path, number, heading, self._decompress(dict_id, data).decode())
                for id_, path, number, heading, dict_id, data in rows
            ]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on error) on an autocommit connection; nests as a no-op."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._outer = False

    def __enter__(self) -> sqlite3.Connection:
        self._outer = not self._conn.in_transaction
        if self._outer:
            self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if not self._outer:
            return
        self._conn.execute("ROLLBACK" if exc_type else "COMMIT")
