"""RecordStore: records of every kind in one SQLite file under the workspace's state folder, searchable by meaning.

Why a file of its own and not a registry table: records are the knowledge of this workspace's LM
features (the learning loop, the builder), kept beside the library's ``library.sqlite3``; the rows are
opaque compressed frames that the registry never queries, and a separate file leaves the registry's
Alembic chain alone. A PostgreSQL backend can come behind the same methods when several machines
must share records.

Each row keeps the record's frame (msgpack + zstd, see ``codec``), its kind, schema version and the id
of the dictionary it was compressed with, and its embedding (float32), so a restart rebuilds the Faiss
indexes without re-embedding. Dictionaries are trained per kind once ``train_at`` records of the kind
exist (earlier records are then recompressed with it); ``train_dictionary`` trains a new version at any
time, and older versions stay as long as any row names them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard

from mesh import embedding
from mesh.chunks import _Transaction
from mesh.knowledge import codec
from mesh.knowledge.codec import Dictionary, RecordCodec
from mesh.knowledge.records import KINDS, Record
from mesh.vectors import VectorIndex

FILENAME = "records.sqlite3"
MODEL_KEY = "embedding_model"

SCHEMA = """
CREATE TABLE IF NOT EXISTS dictionaries (
    dict_id INTEGER PRIMARY KEY,          -- zstd's id, written into every frame compressed with it
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    data BLOB NOT NULL,
    samples INTEGER NOT NULL,
    created REAL NOT NULL,
    UNIQUE (kind, version)
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    dict_id INTEGER NOT NULL,             -- 0: compressed without a dictionary
    raw_size INTEGER NOT NULL,            -- bytes of the msgpack payload
    data BLOB NOT NULL,
    vector BLOB,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_kind ON records (kind, id);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

Embed = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Hit:
    """A search result: which record, of what kind, how close (cosine similarity)."""

    id: int
    kind: str
    score: float


@dataclass(frozen=True)
class KindStats:
    kind: str
    records: int
    with_dictionary: int
    raw_bytes: int
    stored_bytes: int
    dictionary_version: int | None
    dictionary_bytes: int

    @property
    def ratio(self) -> float:
        """msgpack bytes over stored bytes (the dictionary not counted)."""
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 1.0


class RecordStore:
    """Records, their compressed frames and vectors in one SQLite file; one Faiss index per kind."""

    def __init__(
        self,
        path: str | Path,
        *,
        train_at: int = 500,
        dict_size: int = codec.DEFAULT_DICT_SIZE,
        level: int = codec.DEFAULT_LEVEL,
        max_samples: int = 2000,
        embed: Embed = embedding.embed,
        dimension: int = embedding.DIMENSION,
        model_name: str = embedding.MODEL_NAME,
    ) -> None:
        self.path = Path(path)
        self.train_at = train_at
        self.dict_size = dict_size
        self.max_samples = max_samples
        self._embed = embed
        self._dimension = dimension
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        rows = self._conn.execute("SELECT kind, version, dict_id, data, samples FROM dictionaries").fetchall()
        self.codec = RecordCodec([Dictionary(*row) for row in rows], level=level)
        self._indexes: dict[str, VectorIndex] = {}
        self._failed_training: dict[str, int] = {}
        self._load_vectors(model_name)

    @classmethod
    def open(cls, state_dir: str | Path, **options) -> RecordStore:
        """The store of a workspace (or agent) state folder: ``state_dir/records.sqlite3``."""
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls(state_dir / FILENAME, **options)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------------

    def put(self, record: Record) -> int:
        """Store a record; returns its id."""
        return self.put_many([record])[0]

    def put_many(self, records: Sequence[Record]) -> list[int]:
        """Store records in one transaction, embedding them in one batch; returns their ids in order."""
        if not records:
            return []
        vectors = np.asarray(self._embed([record.search_text() for record in records]), np.float32)
        if vectors.shape != (len(records), self._dimension):
            raise ValueError(f"embed() gave shape {vectors.shape} for {len(records)} records of {self._dimension}-d")
        now = time.time()
        with self._lock:
            with _Transaction(self._conn):
                ids = []
                for record, vector in zip(records, vectors, strict=True):
                    payload = codec.pack(record)
                    dict_id, frame = self.codec.compress(record.KIND, payload)
                    ids.append(
                        self._conn.execute(
                            "INSERT INTO records (kind, schema_version, dict_id, raw_size, data, vector, created)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (
                                record.KIND,
                                record.SCHEMA_VERSION,
                                dict_id,
                                len(payload),
                                frame,
                                np.asarray(vector, np.float32).tobytes(),
                                now,
                            ),
                        ).lastrowid
                    )
            by_kind: dict[str, list[int]] = {}
            for position, record in enumerate(records):
                by_kind.setdefault(record.KIND, []).append(position)
            for kind, positions in by_kind.items():
                self._index(kind).add([ids[p] for p in positions], vectors[positions])
                self._maybe_train(kind)
        return ids

    def delete(self, ids: Sequence[int]) -> int:
        """Forget records; returns how many existed."""
        with self._lock, _Transaction(self._conn):
            removed = 0
            for id_ in ids:
                removed += self._conn.execute("DELETE FROM records WHERE id = ?", (int(id_),)).rowcount
            for index in self._indexes.values():
                index.remove(ids)
        return removed

    # -- reading --------------------------------------------------------------------------------------

    def get(self, id_: int) -> Record:
        records = self.get_many([id_])
        if id_ not in records:
            raise KeyError(f"no record {id_}")
        return records[id_]

    def get_many(self, ids: Sequence[int]) -> dict[int, Record]:
        """The records with these ids that exist, by id."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self._conn.execute(f"SELECT id, data FROM records WHERE id IN ({marks})", [int(i) for i in ids])
            return {id_: self.codec.decode(frame) for id_, frame in rows.fetchall()}

    def records(self, kind: str | None = None) -> Iterator[tuple[int, Record]]:
        """Every record (of one kind), oldest first."""
        where, args = ("WHERE kind = ?", (kind,)) if kind else ("", ())
        with self._lock:
            rows = self._conn.execute(f"SELECT id, data FROM records {where} ORDER BY id", args).fetchall()
            decoded = [(id_, self.codec.decode(frame)) for id_, frame in rows]
        yield from decoded

    def count(self, kind: str | None = None) -> int:
        where, args = ("WHERE kind = ?", (kind,)) if kind else ("", ())
        with self._lock:
            return self._conn.execute(f"SELECT count(*) FROM records {where}", args).fetchone()[0]

    def search(self, query: str, *, k: int = 10, kinds: Sequence[str] | None = None) -> list[Hit]:
        """The ``k`` records closest in meaning to ``query`` (of these kinds), best first."""
        return self.search_vector(self._embed([query])[0], k=k, kinds=kinds)

    def search_vector(self, vector: np.ndarray, *, k: int = 10, kinds: Sequence[str] | None = None) -> list[Hit]:
        with self._lock:
            indexes = dict(self._indexes)  # put_many may add a kind's index meanwhile
        hits: list[Hit] = []
        for kind in kinds or sorted(indexes):
            if kind not in KINDS:
                raise LookupError(f"unknown record kind {kind!r}")
            index = indexes.get(kind)
            if index is not None and len(index):
                hits.extend(Hit(id_, kind, score) for id_, score in index.search(vector, k))
        hits.sort(key=lambda hit: -hit.score)
        return hits[:k]

    # -- dictionaries ---------------------------------------------------------------------------------

    def train_dictionary(self, kind: str, *, recompress: bool = False) -> Dictionary:
        """Train a new dictionary version for ``kind`` on its newest records; new records use it from now on.

        Existing rows keep the dictionary they were written with (their frames name it) unless
        ``recompress`` is set. Raises ``zstandard.ZstdError`` when there is too little to train on.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT data FROM records WHERE kind = ? ORDER BY id DESC LIMIT ?", (kind, self.max_samples)
            ).fetchall()
            samples = [self.codec.decompress(frame) for (frame,) in rows]
            current = self.codec.current(kind)
            taken = {d.dict_id for d in self.codec.dictionaries()}
            dictionary = codec.train(
                kind,
                (current.version if current else 0) + 1,
                samples,
                size=self.dict_size,
                taken=taken,
                level=self.codec.level,
            )
            with _Transaction(self._conn):
                self._conn.execute(
                    "INSERT INTO dictionaries (dict_id, kind, version, data, samples, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (dictionary.dict_id, kind, dictionary.version, dictionary.data, dictionary.samples, time.time()),
                )
            self.codec.add(dictionary)
            if recompress:
                self.recompress(kind)
        return dictionary

    def recompress(self, kind: str) -> int:
        """Rewrite ``kind``'s rows that use an older dictionary (or none) with the current one; returns how many."""
        with self._lock:
            current = self.codec.current(kind)
            dict_id = current.dict_id if current else 0
            stale = self._conn.execute(
                "SELECT id, data FROM records WHERE kind = ? AND dict_id != ?", (kind, dict_id)
            ).fetchall()
            with _Transaction(self._conn):
                self._conn.executemany(
                    "UPDATE records SET dict_id = ?, data = ? WHERE id = ?",
                    [(*self.codec.compress(kind, self.codec.decompress(frame)), id_) for id_, frame in stale],
                )
        return len(stale)

    def dictionaries(self) -> list[Dictionary]:
        return self.codec.dictionaries()

    def stats(self, kind: str) -> KindStats:
        with self._lock:
            count, with_dict, raw, stored = self._conn.execute(
                "SELECT count(*), coalesce(sum(dict_id != 0), 0), coalesce(sum(raw_size), 0),"
                " coalesce(sum(length(data)), 0) FROM records WHERE kind = ?",
                (kind,),
            ).fetchone()
        current = self.codec.current(kind)
        return KindStats(
            kind=kind,
            records=count,
            with_dictionary=with_dict,
            raw_bytes=raw,
            stored_bytes=stored,
            dictionary_version=current.version if current else None,
            dictionary_bytes=len(current.data) if current else 0,
        )

    # -- internals ------------------------------------------------------------------------------------

    def _index(self, kind: str) -> VectorIndex:
        index = self._indexes.get(kind)
        if index is None:
            index = self._indexes[kind] = VectorIndex(self._dimension)
        return index

    def _maybe_train(self, kind: str) -> None:
        """The first dictionary of a kind, once ``train_at`` records exist (retried at twice the count on failure)."""
        if self.codec.current(kind) is not None:
            return
        count = self.count(kind)
        if count < max(self.train_at, 2 * self._failed_training.get(kind, 0)):
            return
        try:
            self.train_dictionary(kind, recompress=True)
        except zstandard.ZstdError:
            self._failed_training[kind] = count  # too little material: records stay plainly compressed

    def _load_vectors(self, model_name: str) -> None:
        """Rebuild the indexes from stored vectors; re-embed everything if the embedding model changed."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (MODEL_KEY,)).fetchone()
        if row and row[0] != model_name:
            rows = self._conn.execute("SELECT id, data FROM records ORDER BY id").fetchall()
            if rows:
                vectors = self._embed([self.codec.decode(frame).search_text() for _, frame in rows])
                with _Transaction(self._conn):
                    self._conn.executemany(
                        "UPDATE records SET vector = ? WHERE id = ?",
                        [(v.astype(np.float32).tobytes(), id_) for (id_, _), v in zip(rows, vectors, strict=True)],
                    )
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (MODEL_KEY, model_name))
        by_kind: dict[str, tuple[list[int], list[bytes]]] = {}
        for id_, kind, vector in self._conn.execute("SELECT id, kind, vector FROM records WHERE vector IS NOT NULL"):
            ids, blobs = by_kind.setdefault(kind, ([], []))
            ids.append(id_)
            blobs.append(vector)
        for kind, (ids, blobs) in by_kind.items():
            matrix = np.frombuffer(b"".join(blobs), np.float32).reshape(len(ids), self._dimension)
            self._index(kind).add(ids, matrix)
