"""Validate a write and split it into one write-ahead-log entry per shard. Pure: no I/O.

Placement (DESIGN §3): an entity lives on shard(id); a chunk on shard(document_id); a relation on
shard(source) and, as the incoming copy, on shard(target); a mention on the chunk's shard and on
the entity's shard. Deletes of entities and documents go to every shard, since copies and stubs may
be anywhere; a relation's delete goes to its two ends' shards.

Every entry of one write carries the write's `version` (torua.hlc, given by the router): the copies
apply last-writer-wins by it (shard/apply.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from torua.embedding import Embedder
from torua.errors import BadRequest, PayloadTooLarge
from torua.hashing import shard_for
from torua.model import MAX_KV_VALUE_BYTES, Chunk, DeleteRequest, UpsertRequest
from torua.shardwire import kv_shard  # shared with the client, which places keys the same way
from torua.text import entity_embedding_text
from torua_node.shard.wal import (
    WalChunk,
    WalDocument,
    WalEntity,
    WalEntry,
    WalKV,
    WalMention,
    WalRelation,
    WalRelationKey,
)

__all__ = ["split_upsert", "split_delete", "split_kv", "kv_shard", "validate_upsert"]


def _json(value: dict) -> str:
    # Sorted keys: the same properties always give the same stored text on every replica.
    return msgspec.json.encode(value, order="sorted").decode() if value else "{}"


def _given_vectors(given: list[Sequence[float] | None], dim: int, field: str) -> list[bytes | None]:
    """The given vectors as little-endian float32 bytes (None where absent), checked in one pass."""
    rows = [i for i, v in enumerate(given) if v is not None]
    for i, v in enumerate(given):
        if v is not None and len(v) != dim:
            raise BadRequest(f"{field}[{i}].embedding has {len(v)} values; this cluster's embedding_dim is {dim}")
    out: list[bytes | None] = [None] * len(given)
    if not rows:
        return out
    with np.errstate(over="ignore"):  # out of float32 range becomes inf, refused below
        matrix = np.array([given[i] for i in rows], dtype="<f4")
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad.size:
        raise BadRequest(f"{field}[{rows[bad[0]]}].embedding contains a value that is not a finite"
                         " number in float32 range")
    for i, row in zip(rows, matrix):
        out[i] = row.tobytes()
    return out


def validate_upsert(req: UpsertRequest, dim: int) -> tuple[list[bytes | None], list[bytes | None]]:
    """Everything msgspec's schema cannot say; errors name the field. Returns the given entity and
    chunk vectors, converted."""
    if not (req.documents or req.chunks or req.entities or req.relations):
        raise BadRequest("nothing to write: give at least one of documents, chunks, entities, relations")
    ent_vecs = _given_vectors([e.embedding for e in req.entities], dim, "entities")
    chunk_vecs = _given_vectors([c.embedding for c in req.chunks], dim, "chunks")
    for i, r in enumerate(req.relations):
        if not math.isfinite(r.weight):
            raise BadRequest(f"relations[{i}].weight must be a finite number")
    for i, d in enumerate(req.documents):
        _check_json_numbers(d.metadata, f"documents[{i}].metadata")
    for i, e in enumerate(req.entities):
        _check_json_numbers(e.properties, f"entities[{i}].properties")
    for i, r in enumerate(req.relations):
        _check_json_numbers(r.properties, f"relations[{i}].properties")
    return ent_vecs, chunk_vecs


def _check_json_numbers(value: object, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{where} contains a number that is not finite")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_json_numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for v in value:
            _check_json_numbers(v, where)


def _vectors(texts: list[str], given: list[bytes | None], embedder: Embedder) -> list[bytes]:
    """Little-endian float32 bytes per row; missing ones computed by the embedder in one call."""
    missing = [i for i, v in enumerate(given) if v is None]
    computed = iter(embedder.embed([texts[i] for i in missing])) if missing else iter(())
    return [v if v is not None else next(computed).astype("<f4").tobytes() for v in given]


def split_upsert(
    req: UpsertRequest, num_shards: int, embedder: Embedder, request_id: str, ts: float, version: int = 0
) -> dict[int, WalEntry]:
    given_ent, given_chunk = validate_upsert(req, embedder.dim)
    entries: dict[int, WalEntry] = {}

    def entry(shard: int) -> WalEntry:
        if shard not in entries:
            entries[shard] = WalEntry(request_id=request_id, ts=ts, version=version)
        return entries[shard]

    placed: dict[str, int] = {}  # relations name the same ids again and again

    def shard(key: str) -> int:
        s = placed.get(key)
        if s is None:
            s = placed[key] = shard_for(key, num_shards)
        return s

    for d in req.documents:
        entry(shard(d.id)).documents.append(WalDocument(d.id, d.title, _json(d.metadata)))
    ent_vecs = _vectors([entity_embedding_text(e.id, e.name, e.description) for e in req.entities], given_ent, embedder)
    for e, vec in zip(req.entities, ent_vecs):
        entry(shard(e.id)).entities.append(WalEntity(e.id, e.name, e.type, e.description, _json(e.properties), vec))
    chunk_vecs = _vectors([c.text for c in req.chunks], given_chunk, embedder)
    for c, vec in zip(req.chunks, chunk_vecs):
        home = shard(c.document_id)
        entry(home).chunks.append(WalChunk(c.id, c.document_id, c.text, c.position, vec))
        _add_mentions(c, home, shard, entry)
    for r in req.relations:
        rel = WalRelation(r.source, r.target, r.type, float(r.weight), _json(r.properties), tuple(r.chunks))
        for s in {shard(r.source), shard(r.target)}:
            entry(s).relations.append(rel)
    return entries


def _add_mentions(c: Chunk, home: int, shard: Callable[[str], int], entry: Callable[[int], WalEntry]) -> None:
    for entity_id in dict.fromkeys(c.entities):  # dedupe, keep order
        mention = WalMention(c.id, c.document_id, entity_id)
        for s in {home, shard(entity_id)}:
            entry(s).mentions.append(mention)


def split_delete(
    req: DeleteRequest, num_shards: int, request_id: str, ts: float, version: int = 0
) -> dict[int, WalEntry]:
    if not (req.entities or req.documents or req.relations):
        raise BadRequest("nothing to delete: give entities or documents (lists of ids), or relations"
                         " ({source, target, type} each)")
    ents, docs = list(dict.fromkeys(req.entities)), list(dict.fromkeys(req.documents))
    entries: dict[int, WalEntry] = {}
    if ents or docs:
        entries = {
            s: WalEntry(request_id=request_id, ts=ts, version=version, delete_entities=ents, delete_documents=docs)
            for s in range(num_shards)
        }
    for source, target, type_ in dict.fromkeys((r.source, r.target, r.type) for r in req.relations):
        key = WalRelationKey(source, target, type_)
        for s in {shard_for(source, num_shards), shard_for(target, num_shards)}:
            if s not in entries:
                entries[s] = WalEntry(request_id=request_id, ts=ts, version=version)
            entries[s].delete_relations.append(key)
    return entries


def split_kv(
    key: str, value: str | None, num_shards: int, request_id: str, ts: float, version: int = 0
) -> dict[int, WalEntry]:
    if value is not None and len(value.encode("utf-8")) > MAX_KV_VALUE_BYTES:
        raise PayloadTooLarge(f"value is {len(value.encode('utf-8'))} bytes; the limit is {MAX_KV_VALUE_BYTES} (1 MiB)")
    entry = WalEntry(request_id=request_id, ts=ts, version=version, kv=[WalKV(key, value)])
    return {kv_shard(key, num_shards): entry}
