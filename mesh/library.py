"""Library: a folder of documents, chunked, embedded and searchable by meaning — independent of MCP.

``refresh()`` brings the index in line with the files: a file whose size and mtime are unchanged is not
even read, one whose bytes hash the same is only re-stamped, and only a changed file is re-chunked and
re-embedded. Chunks and their vectors live in a ``ChunkStore`` (one SQLite file), so a restart rebuilds
the in-memory ``VectorIndex`` from stored vectors without embedding anything.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field

from mesh import embedding
from mesh.chunks import Chunk, ChunkStore, StoredChunk, split_text
from mesh.vectors import VectorIndex

DEFAULT_PATHS = ("README.md", "docs")
SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst"})
MAX_K = 50
SNIPPET_CHARS = 320
MODEL_KEY = "embedding_model"


class Passage(BaseModel):
    """One search hit: where it is, how well it matched, and the start of its text."""

    document: str = Field(description="Path of the document, relative to the workspace.")
    chunk: int = Field(description="Chunk number within the document (pass it to `read`).")
    heading: str = Field(description="The headings the passage sits under, outermost first.")
    score: float = Field(description="Cosine similarity to the query, higher is closer.")
    text: str = Field(description="The passage's opening text, whitespace collapsed.")


class DocumentInfo(BaseModel):
    document: str = Field(description="Path of the document, relative to the workspace.")
    chunks: int = Field(description="How many chunks it was cut into.")
    size: int = Field(description="Size of the file in bytes.")


class Reading(BaseModel):
    """The full text of one chunk, or of a whole document when no chunk is asked for."""

    document: str
    chunk: int | None = Field(description="The chunk read, or null for the whole document.")
    chunks: int = Field(description="How many chunks the document has.")
    heading: str = ""
    text: str


@dataclass
class RefreshReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


class Library:
    """Documents under ``root`` (the files and folders named by ``paths``) kept in ``store``."""

    def __init__(self, root: Path, store: ChunkStore, paths: Sequence[str] = DEFAULT_PATHS) -> None:
        self.root = Path(root).resolve()
        self.store = store
        self.paths = [self._inside_root(path) for path in paths]
        self.index = VectorIndex(embedding.DIMENSION)
        self._lock = threading.Lock()
        self._refreshed = 0.0
        self._load_vectors()

    @classmethod
    def open(cls, root: Path, state_dir: Path, paths: Sequence[str] = DEFAULT_PATHS) -> Library:
        """A library whose store is ``state_dir/library.sqlite3``."""
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls(root, ChunkStore(state_dir / "library.sqlite3"), paths)

    def close(self) -> None:
        self.store.close()

    # -- indexing -------------------------------------------------------------------------------------

    def refresh(self) -> RefreshReport:
        """Re-index what changed on disk since the last refresh (or the last run)."""
        with self._lock:
            report = RefreshReport()
            files = self._files()
            known = {document.path: document for document in self.store.documents()}
            for name, file in files.items():
                stat = file.stat()
                document = known.get(name)
                if document and (document.mtime_ns, document.size) == (stat.st_mtime_ns, stat.st_size):
                    report.unchanged.append(name)
                    continue
                data = file.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                if document and document.sha256 == digest:
                    self.store.touch(name, mtime_ns=stat.st_mtime_ns, size=stat.st_size)
                    report.unchanged.append(name)
                    continue
                self._index_document(name, data.decode("utf-8", errors="replace"), digest, stat)
                (report.updated if document else report.added).append(name)
            for name in sorted(known.keys() - files.keys()):
                self.index.remove(self.store.delete(name))
                report.removed.append(name)
            self._refreshed = time.monotonic()
            return report

    def ensure_fresh(self, max_age: float) -> None:
        """Refresh if the last refresh is older than ``max_age`` seconds (cheap: it stats the files)."""
        if time.monotonic() - self._refreshed >= max_age:
            self.refresh()

    # -- reading --------------------------------------------------------------------------------------

    def search(self, query: str, k: int = 5) -> list[Passage]:
        """The ``k`` passages closest in meaning to ``query``, best first."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        if not query.strip():
            raise ValueError("query is empty: say what to look for")
        hits = self.index.search(embedding.embed([query])[0], k)
        passages = []
        for chunk_id, score in hits:
            chunk = self.store.chunk(chunk_id)
            if chunk is not None:  # removed by a concurrent refresh
                passages.append(_passage(chunk, score))
        return passages

    def read(self, document: str, chunk: int | None = None) -> Reading:
        """One chunk's full text, or (``chunk=None``) the whole document as indexed."""
        name = self._known_document(document)
        chunks = self.store.chunks(name)
        if chunk is None:
            return Reading(document=name, chunk=None, chunks=len(chunks), text="".join(c.text for c in chunks))
        if not 0 <= chunk < len(chunks):
            raise ValueError(f"{name} has chunks 0 to {len(chunks) - 1}; there is no chunk {chunk}")
        found = chunks[chunk]
        return Reading(document=name, chunk=chunk, chunks=len(chunks), heading=found.heading, text=found.text)

    def documents(self) -> list[DocumentInfo]:
        return [
            DocumentInfo(document=document.path, chunks=document.chunks, size=document.size)
            for document in self.store.documents()
        ]

    # -- internals ------------------------------------------------------------------------------------

    def _inside_root(self, path: str) -> Path:
        resolved = (self.root / path).resolve()
        if not resolved.is_relative_to(self.root):
            raise ValueError(f"library path {path!r} is outside the workspace {self.root}")
        return resolved

    def _files(self) -> dict[str, Path]:
        """Every document to index, by its workspace-relative POSIX path."""
        found: dict[str, Path] = {}
        for path in self.paths:
            if path.is_file():
                candidates = [path]
            elif path.is_dir():
                candidates = sorted(
                    file
                    for file in path.rglob("*")
                    if file.suffix.lower() in SUFFIXES
                    and file.is_file()
                    and not any(part.startswith(".") for part in file.relative_to(path).parts)
                )
            else:
                continue  # a missing default (no README, no docs/) is not an error
            for file in candidates:
                resolved = file.resolve()
                if resolved.is_relative_to(self.root):
                    found[resolved.relative_to(self.root).as_posix()] = resolved
        return found

    def _index_document(self, name: str, text: str, digest: str, stat: os.stat_result) -> None:
        pieces = split_text(text)
        vectors = embedding.embed([_embedding_text(name, piece.heading, piece.text) for piece in pieces])
        old_ids = self.store.chunk_ids(name)
        chunks = [Chunk(piece.text, piece.heading, vector) for piece, vector in zip(pieces, vectors, strict=True)]
        ids = self.store.put(name, chunks, sha256=digest, mtime_ns=stat.st_mtime_ns, size=stat.st_size)
        self.index.remove(old_ids)
        if ids:
            self.index.add(ids, vectors)

    def _load_vectors(self) -> None:
        """Fill the index from stored vectors, re-embedding everything if the model changed."""
        if self.store.get_meta(MODEL_KEY) != embedding.MODEL_NAME:
            stored = self.store.all_chunks()
            if stored:
                vectors = embedding.embed([_embedding_text(c.document, c.heading, c.text) for c in stored])
                self.store.set_vectors([c.id for c in stored], vectors)
            self.store.set_meta(MODEL_KEY, embedding.MODEL_NAME)
        ids, vectors = self.store.vectors()
        if ids:
            self.index.add(ids, vectors)

    def _known_document(self, document: str) -> str:
        name = PurePosixPath(document.replace("\\", "/")).as_posix().removeprefix("./")
        if self.store.document(name) is None:
            known = [d.path for d in self.store.documents()]
            listing = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "") if known else "none"
            raise ValueError(f"unknown document {document!r}; indexed documents: {listing}")
        return name


def _embedding_text(document: str, heading: str, text: str) -> str:
    """What gets embedded: the document's name and heading path give a passage its context."""
    title = PurePosixPath(document).stem.replace("-", " ").replace("_", " ")
    return f"{title} > {heading}\n\n{text}" if heading else f"{title}\n\n{text}"


def _passage(chunk: StoredChunk, score: float) -> Passage:
    snippet = " ".join(chunk.text.split())
    if len(snippet) > SNIPPET_CHARS:
        snippet = snippet[:SNIPPET_CHARS].rsplit(" ", 1)[0] + " …"
    return Passage(
        document=chunk.document, chunk=chunk.number, heading=chunk.heading, score=round(score, 4), text=snippet
    )
