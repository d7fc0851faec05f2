"""Records as bytes: msgpack inside a zstd frame, compressed with a trained, versioned dictionary.

Each record is its own frame, so any one can be read alone. Short records barely compress on their
own (zstd needs context to find repeats); a dictionary trained on records of the same kind supplies
that context. A frame names the dictionary it was compressed with (zstd writes the dictionary id into
the frame header), so the codec reads the id back from the frame itself and picks the dictionary:
a record written under dictionary v1 still decodes after v2 is trained, as long as v1 is kept.

The payload is ``[kind, schema_version, data]``, so a frame is self-describing: no side table is
needed to know what it holds or which schema to validate it against.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field

import msgpack
import zstandard

from mesh.knowledge.records import Record, dump_record, load_record

DEFAULT_LEVEL = 3
DEFAULT_DICT_SIZE = 64 * 1024
FIRST_FREE_DICT_ID = 32768
"""zstd reserves dictionary ids below this for a future registry of public dictionaries."""


@dataclass(frozen=True)
class Dictionary:
    """A trained zstd dictionary for one record kind; ``version`` counts up per kind."""

    kind: str
    version: int
    dict_id: int
    data: bytes = field(repr=False)
    samples: int


def pack(record: Record) -> bytes:
    """The msgpack payload of a record (before compression)."""
    return msgpack.packb([record.KIND, record.SCHEMA_VERSION, dump_record(record)], use_bin_type=True)


def unpack(payload: bytes) -> Record:
    kind, schema_version, data = msgpack.unpackb(payload, raw=False)
    return load_record(kind, schema_version, data)


def train(
    kind: str,
    version: int,
    samples: list[bytes],
    *,
    size: int = DEFAULT_DICT_SIZE,
    taken: frozenset[int] | set[int] = frozenset(),
    level: int = DEFAULT_LEVEL,
) -> Dictionary:
    """Train a dictionary on packed records of one kind (zstd raises ``ZstdError`` when they are too few).

    ``taken`` are dictionary ids already in use: a new dictionary gets an id of its own, so a frame's id
    always names exactly one dictionary.
    """
    trained = zstandard.train_dictionary(size, samples, level=level)
    dict_id = trained.dict_id()
    while dict_id in taken or dict_id < FIRST_FREE_DICT_ID:
        dict_id = FIRST_FREE_DICT_ID + secrets.randbelow(2**31 - FIRST_FREE_DICT_ID)
        trained = zstandard.train_dictionary(size, samples, level=level, dict_id=dict_id)
    return Dictionary(kind=kind, version=version, dict_id=dict_id, data=trained.as_bytes(), samples=len(samples))


class RecordCodec:
    """Encodes records with the newest dictionary of their kind; decodes with whichever a frame names.

    Not safe for concurrent use (zstd contexts are reused): the record store calls it under its lock.
    """

    def __init__(self, dictionaries: list[Dictionary] = (), *, level: int = DEFAULT_LEVEL) -> None:
        self.level = level
        self._lock = threading.Lock()
        self._by_id: dict[int, Dictionary] = {}
        self._current: dict[str, Dictionary] = {}
        self._compressors: dict[int, zstandard.ZstdCompressor] = {}
        self._decompressors: dict[int, zstandard.ZstdDecompressor] = {}
        for dictionary in dictionaries:
            self.add(dictionary)

    def add(self, dictionary: Dictionary) -> None:
        """Know a dictionary; the highest version of a kind is the one new records are compressed with."""
        with self._lock:
            self._by_id[dictionary.dict_id] = dictionary
            current = self._current.get(dictionary.kind)
            if current is None or dictionary.version > current.version:
                self._current[dictionary.kind] = dictionary

    def current(self, kind: str) -> Dictionary | None:
        return self._current.get(kind)

    def dictionaries(self) -> list[Dictionary]:
        return sorted(self._by_id.values(), key=lambda d: (d.kind, d.version))

    def encode(self, record: Record) -> tuple[int, bytes]:
        """``(dict_id, frame)`` for a record; ``dict_id`` 0 when its kind has no dictionary yet."""
        return self.compress(record.KIND, pack(record))

    def compress(self, kind: str, payload: bytes) -> tuple[int, bytes]:
        dictionary = self._current.get(kind)
        dict_id = dictionary.dict_id if dictionary else 0
        return dict_id, self._compressor(dict_id).compress(payload)

    def decode(self, frame: bytes) -> Record:
        return unpack(self.decompress(frame))

    def decompress(self, frame: bytes) -> bytes:
        """The payload of a frame, with the dictionary the frame's header names."""
        dict_id = zstandard.get_frame_parameters(frame).dict_id
        return self._decompressor(dict_id).decompress(frame)

    # -- internals ------------------------------------------------------------------------------------

    def _zstd_dict(self, dict_id: int) -> zstandard.ZstdCompressionDict | None:
        if not dict_id:
            return None
        dictionary = self._by_id.get(dict_id)
        if dictionary is None:
            raise LookupError(f"zstd dictionary {dict_id} is not known (was it deleted?)")
        return zstandard.ZstdCompressionDict(dictionary.data)

    def _compressor(self, dict_id: int) -> zstandard.ZstdCompressor:
        compressor = self._compressors.get(dict_id)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=self.level, dict_data=self._zstd_dict(dict_id))
            self._compressors[dict_id] = compressor
        return compressor

    def _decompressor(self, dict_id: int) -> zstandard.ZstdDecompressor:
        decompressor = self._decompressors.get(dict_id)
        if decompressor is None:
            decompressor = zstandard.ZstdDecompressor(dict_data=self._zstd_dict(dict_id))
            self._decompressors[dict_id] = decompressor
        return decompressor
