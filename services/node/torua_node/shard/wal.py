"""The write-ahead log: one JetStream stream, one subject per shard, one entry per request and shard.

Entries are msgpack (compact, and embeddings travel as raw little-endian float32 bytes). Everything
an entry needs to be applied is inside it — ids, timestamps and embeddings are fixed by the writer —
so every replica applying the same entries ends with the same content.
"""

from __future__ import annotations

import msgspec
import xxhash

__all__ = [
    "WalDocument",
    "WalEntity",
    "WalChunk",
    "WalRelation",
    "WalMention",
    "WalKV",
    "WalRelationKey",
    "WalEntry",
    "encode_entry",
    "decode_entry",
    "fingerprint",
]

# Rows are gc=False (they hold no references back): a batch holds hundreds of thousands of them, and
# garbage collections walking them measured as a quarter of a node's ingest time. The fields of
# WalDocument, WalEntity and WalChunk are the columns of their tables (torua_node.storage.tables,
# but the stub flag), in the same order: apply copies them over by name.
class WalDocument(msgspec.Struct, array_like=True, gc=False):
    id: str
    title: str
    metadata: str  # JSON text


class WalEntity(msgspec.Struct, array_like=True, gc=False):
    id: str
    name: str
    type: str
    description: str
    properties: str  # JSON text
    embedding: bytes  # float32 little-endian, exactly dim values


class WalChunk(msgspec.Struct, array_like=True, gc=False):
    id: str
    document_id: str
    text: str
    position: int
    embedding: bytes


class WalRelation(msgspec.Struct, array_like=True, gc=False):
    source: str
    target: str
    type: str
    weight: float
    properties: str  # JSON text
    chunks: tuple[str, ...]


class WalMention(msgspec.Struct, array_like=True, gc=False):
    chunk_id: str
    document_id: str
    entity_id: str


class WalKV(msgspec.Struct, array_like=True, gc=False):
    key: str
    value: str | None  # None deletes


class WalRelationKey(msgspec.Struct, array_like=True, gc=False):
    """What names one relation: both ends and its type."""

    source: str
    target: str
    type: str


class WalEntry(msgspec.Struct, kw_only=True):
    """What one request does to one shard. Applied in this order: deletes, then upserts."""

    request_id: str
    ts: float  # writer's clock, stored as-is: apply never reads the clock
    # The write's version (torua.hlc), the same in every shard's entry of one request: copies apply
    # last-writer-wins by it. 0 (entries written before versions existed): the entry's log position.
    version: int = 0
    delete_entities: list[str] = []
    delete_documents: list[str] = []
    delete_relations: list[WalRelationKey] = []
    documents: list[WalDocument] = []
    entities: list[WalEntity] = []
    chunks: list[WalChunk] = []
    relations: list[WalRelation] = []
    mentions: list[WalMention] = []
    kv: list[WalKV] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(WalEntry)


def encode_entry(entry: WalEntry) -> bytes:
    return _encoder.encode(entry)


def decode_entry(data: bytes) -> WalEntry:
    return _decoder.decode(data)


def fingerprint(raw: bytes) -> int:
    """A 64-bit hash of one stored entry (signed, to fit Kuzu's INT64): a replica keeps the one of
    the entry at its `applied_seq`, and later checks that the log still holds that entry there."""
    h = xxhash.xxh64_intdigest(raw)
    return h - (1 << 64) if h >= 1 << 63 else h
