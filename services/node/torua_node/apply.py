"""Apply write-ahead-log entries to one shard replica, exactly once and deterministically.

`apply_batch` runs on the shard's thread. The stored `applied_seq` moves in the same Kuzu transaction
as the mutations, so redelivery, replay and restart never apply an entry twice nor skip one. A whole
batch is one transaction; if it fails, entries are retried one per transaction, and an entry that
fails on its own is recorded in `Failure` and skipped, identically on every replica.

Consecutive entries without deletes are coalesced into one bulk step per table (last write wins per
key, mentions are a set): the result equals applying them one by one because upserts replace whole
rows and stubs are only ever created for absent ids.
"""

from __future__ import annotations

import importlib.util  # noqa: F401 - kuzu 0.11.3 uses importlib.util without importing it
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import kuzu
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torua_node.schema import APPLIED_SEQ_KEY, read_applied_seq
from torua_node.wal import WalChunk, WalDocument, WalEntity, WalEntry, WalRelation, decode_entry

if TYPE_CHECKING:
    from torua_node.vectors import VectorIndex

__all__ = ["ApplyResult", "apply_batch"]

# Below these sizes Cypher `LOAD FROM ... CREATE` beats `COPY`, whose fixed cost is ~0.1 s for a node
# table and, for a rel table, grows with the edges already stored (it rewrites the adjacency lists).
NODE_COPY_MIN_ROWS = 20_000
REL_COPY_MIN_ROWS = 20_000
# Never COPY into Entity/Chunk: in kuzu 0.11.3 a COPY that follows a not-yet-checkpointed SET of a
# FLOAT[n] column (an embedding upsert) writes the updated row's old vector into the new rows, even
# across transactions and after the table was emptied. LOAD FROM ... CREATE is not affected.
_COPY_SAFE_NODE_TABLES = frozenset({"Document", "KV"})
MAX_ERROR_LEN = 300
_INT64 = (-(1 << 63), (1 << 63) - 1)
# Kuzu errors that say nothing about the entry (memory, disk, interruption): never recorded as poison,
# since another replica with more memory would apply the entry and the replicas would diverge.
_TRANSIENT = ("Buffer manager exception", "IO exception", "Interrupted", "Checkpoint exception",
              "Transaction manager exception")


@dataclass(slots=True)
class ApplyResult:
    """What a batch did. The vector fields are net changes for the in-memory indexes: apply
    `*_removed` and `*_ids`/`*_vectors` in either order (the id sets are disjoint).

    `error` is set when a transient failure (memory, disk) stopped the batch early: entries after
    `applied_seq` were not applied and must be delivered again."""

    applied_seq: int
    dim: int
    applied: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)
    entity_ids: list[str] = field(default_factory=list)
    entity_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    entities_removed: list[str] = field(default_factory=list)
    chunk_ids: list[str] = field(default_factory=list)
    chunk_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    chunks_removed: list[str] = field(default_factory=list)
    error: str | None = None

    def update_indexes(self, entities: VectorIndex, chunks: VectorIndex) -> None:
        entities.remove(self.entities_removed)
        entities.upsert(self.entity_ids, self.entity_vectors)
        chunks.remove(self.chunks_removed)
        chunks.upsert(self.chunk_ids, self.chunk_vectors)


class _Poison(Exception):
    """An entry rejected before it reaches Kuzu (same verdict on every replica)."""


@dataclass(slots=True)
class _Delta:
    """Net vector changes, id -> float32 bytes (upsert) or None (removed); later changes win."""

    entities: dict[str, bytes | None] = field(default_factory=dict)
    chunks: dict[str, bytes | None] = field(default_factory=dict)

    def merge(self, other: _Delta) -> None:
        for mine, theirs in ((self.entities, other.entities), (self.chunks, other.chunks)):
            for k, v in theirs.items():
                mine.pop(k, None)  # keep "last change last" so the order stays deterministic
                mine[k] = v


@dataclass(slots=True)
class _Upserts:
    """The upserts of consecutive delete-free entries, coalesced with last-write-wins per key."""

    documents: dict[str, WalDocument] = field(default_factory=dict)
    entities: dict[str, WalEntity] = field(default_factory=dict)
    chunks: dict[str, WalChunk] = field(default_factory=dict)
    relations: dict[tuple[str, str, str], WalRelation] = field(default_factory=dict)
    mentions: dict[tuple[str, str], None] = field(default_factory=dict)
    # A stub chunk takes the document id of the first mention that creates it.
    mention_docs: dict[str, str] = field(default_factory=dict)
    kv: dict[str, str | None] = field(default_factory=dict)

    def add(self, e: WalEntry) -> None:
        _put_last(self.documents, ((d.id, d) for d in e.documents))
        _put_last(self.entities, ((x.id, x) for x in e.entities))
        _put_last(self.chunks, ((c.id, c) for c in e.chunks))
        _put_last(self.relations, (((r.source, r.type, r.target), r) for r in e.relations))
        for m in e.mentions:
            self.mentions[(m.chunk_id, m.entity_id)] = None
            self.mention_docs.setdefault(m.chunk_id, m.document_id)
        _put_last(self.kv, ((k.key, k.value) for k in e.kv))


def _put_last(d: dict, items: Iterable[tuple]) -> None:
    for k, v in items:
        d.pop(k, None)
        d[k] = v


# ---------------------------------------------------------------------------------------------------
# Entry point


def apply_batch(conn: kuzu.Connection, batch: list[tuple[int, bytes]], dim: int) -> ApplyResult:
    """Apply `(stream seq, raw entry)` pairs (increasing seq); entries at or below the stored
    applied_seq are skipped."""
    result = ApplyResult(applied_seq=read_applied_seq(conn), dim=dim)
    todo: list[tuple[int, WalEntry | _Poison]] = []
    last = result.applied_seq
    for seq, raw in batch:
        if seq <= last:
            continue  # redelivery or replay of something already applied
        last = seq
        try:
            todo.append((seq, _decode(raw, dim)))
        except _Poison as p:
            todo.append((seq, p))
    if not todo:
        return _finish(result, _Delta(), dim)
    delta = _Delta()
    try:
        _in_tx(conn, lambda: _apply_items(conn, todo, dim, delta))
        _count(result, todo)
        result.applied_seq = todo[-1][0]
    except Exception:  # noqa: BLE001 - rolled back; retried entry by entry below
        delta = _apply_one_by_one(conn, todo, dim, result)
    return _finish(result, delta, dim)


def _apply_one_by_one(
    conn: kuzu.Connection, todo: list[tuple[int, WalEntry | _Poison]], dim: int, result: ApplyResult
) -> _Delta:
    total = _Delta()
    for seq, item in todo:
        one = _Delta()
        try:
            _in_tx(conn, lambda: _apply_items(conn, [(seq, item)], dim, one))
            _count(result, [(seq, item)])
        except (RuntimeError, pa.ArrowException) as exc:
            text = str(exc)
            if isinstance(exc, RuntimeError) and text.startswith(_TRANSIENT):
                result.error = f"seq {seq}: {text}"[:MAX_ERROR_LEN]
                return total
            error = f"{type(exc).__name__}: {text}"[:MAX_ERROR_LEN]
            try:
                _in_tx(conn, lambda: _record_failure(conn, seq, error))
            except Exception as exc2:  # noqa: BLE001 - could not even record it: retry later
                result.error = f"seq {seq}: {type(exc2).__name__}: {exc2}"[:MAX_ERROR_LEN]
                return total
            result.failures.append((seq, error))
        except Exception as exc:  # noqa: BLE001 - not Kuzu's verdict on the entry: stop, retry later
            result.error = f"seq {seq}: {type(exc).__name__}: {exc}"[:MAX_ERROR_LEN]
            return total
        total.merge(one)
        result.applied_seq = seq
    return total


def _count(result: ApplyResult, items: list[tuple[int, WalEntry | _Poison]]) -> None:
    for seq, item in items:
        if isinstance(item, _Poison):
            result.failures.append((seq, str(item)))
        else:
            result.applied += 1


def _finish(result: ApplyResult, delta: _Delta, dim: int) -> ApplyResult:
    result.entity_ids, result.entity_vectors, result.entities_removed = _split(delta.entities, dim)
    result.chunk_ids, result.chunk_vectors, result.chunks_removed = _split(delta.chunks, dim)
    return result


def _split(changes: dict[str, bytes | None], dim: int) -> tuple[list[str], np.ndarray, list[str]]:
    ids = [k for k, v in changes.items() if v is not None]
    blob = b"".join(v for v in changes.values() if v is not None)
    matrix = np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=True).reshape(len(ids), dim)
    return ids, matrix, [k for k, v in changes.items() if v is None]


def _in_tx(conn: kuzu.Connection, fn) -> None:
    conn.execute("BEGIN TRANSACTION")
    try:
        fn()
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except RuntimeError:
            pass  # Kuzu already aborted the transaction when the statement failed
        raise


def _decode(raw: bytes, dim: int) -> WalEntry:
    try:
        entry = decode_entry(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _Poison(f"undecodable entry: {exc}"[:MAX_ERROR_LEN]) from None
    want = dim * 4
    for kind, rows in (("entity", entry.entities), ("chunk", entry.chunks)):
        for row in rows:
            if len(row.embedding) != want:
                raise _Poison(f"{kind} {row.id[:100]!r}: embedding has {len(row.embedding)} bytes,"
                              f" expected {want} ({dim} float32)")
    for c in entry.chunks:
        if not _INT64[0] <= c.position <= _INT64[1]:
            raise _Poison(f"chunk {c.id[:100]!r}: position out of INT64 range")
    return entry


# ---------------------------------------------------------------------------------------------------
# One transaction's worth of entries


def _apply_items(
    conn: kuzu.Connection, items: list[tuple[int, WalEntry | _Poison]], dim: int, delta: _Delta
) -> None:
    seg = _Upserts()
    for seq, item in items:
        if isinstance(item, _Poison):
            _record_failure(conn, seq, str(item), advance=False)
            continue  # a poison entry changes nothing, so coalescing may continue across it
        if item.delete_entities or item.delete_documents:
            _apply_upserts(conn, seg, dim, delta)
            seg = _Upserts()
            _delete_entities(conn, item.delete_entities, delta)
            _delete_documents(conn, item.delete_documents, delta)
        seg.add(item)
    _apply_upserts(conn, seg, dim, delta)
    _set_applied_seq(conn, items[-1][0])


def _set_applied_seq(conn: kuzu.Connection, seq: int) -> None:
    conn.execute("MERGE (m:Meta {key: $k}) SET m.value = $v", {"k": APPLIED_SEQ_KEY, "v": seq})


def _record_failure(conn: kuzu.Connection, seq: int, error: str, advance: bool = True) -> None:
    conn.execute("MERGE (f:Failure {seq: $s}) SET f.error = $e", {"s": seq, "e": error})
    if advance:
        _set_applied_seq(conn, seq)


# ---------------------------------------------------------------------------------------------------
# Deletes


def _delete_entities(conn: kuzu.Connection, ids: list[str], delta: _Delta) -> None:
    if not ids:
        return
    t = _ids(ids)
    found = _col(conn, "LOAD FROM $t MATCH (e:Entity {id: u_id}) RETURN e.id", t)
    if not found:
        return
    t = _ids(found)
    near = _col(conn, "LOAD FROM $t MATCH (e:Entity {id: u_id})-[:RELATES]-(n:Entity) WHERE n.stub"
                      " RETURN DISTINCT n.id", t)
    near_chunks = _col(conn, "LOAD FROM $t MATCH (c:Chunk)-[:MENTIONS]->(e:Entity {id: u_id})"
                             " WHERE c.stub RETURN DISTINCT c.id", t)
    conn.execute("LOAD FROM $t MATCH (e:Entity {id: u_id}) DETACH DELETE e", {"t": t})
    for i in found:
        delta.entities.pop(i, None)
        delta.entities[i] = None
    gone = set(found)
    _drop_orphan_stubs(conn, "Entity", [i for i in near if i not in gone])
    _drop_orphan_stubs(conn, "Chunk", near_chunks)


def _delete_documents(conn: kuzu.Connection, ids: list[str], delta: _Delta) -> None:
    if not ids:
        return
    t = _ids(ids)
    chunks = _col(conn, "LOAD FROM $t MATCH (c:Chunk) WHERE c.document_id = u_id RETURN c.id", t)
    if chunks:
        ct = _ids(chunks)
        near = _col(conn, "LOAD FROM $t MATCH (c:Chunk {id: u_id})-[:MENTIONS]->(e:Entity)"
                          " WHERE e.stub RETURN DISTINCT e.id", ct)
        conn.execute("LOAD FROM $t MATCH (c:Chunk {id: u_id}) DETACH DELETE c", {"t": ct})
        for i in chunks:
            delta.chunks.pop(i, None)
            delta.chunks[i] = None
        _drop_orphan_stubs(conn, "Entity", near)
    conn.execute("LOAD FROM $t MATCH (d:Document {id: u_id}) DELETE d", {"t": t})


def _drop_orphan_stubs(conn: kuzu.Connection, table: str, ids: list[str]) -> None:
    # Only stubs next to something deleted can become orphans, so checking those keeps the
    # invariant "no stub without an edge" after every entry.
    if ids:
        conn.execute(f"LOAD FROM $t MATCH (n:{table} {{id: u_id}}) WHERE n.stub AND NOT EXISTS"
                     " { MATCH (n)-[]-() } DELETE n", {"t": _ids(ids)})


# ---------------------------------------------------------------------------------------------------
# Upserts


def _apply_upserts(conn: kuzu.Connection, seg: _Upserts, dim: int, delta: _Delta) -> None:
    if seg.documents:
        docs = list(seg.documents.values())
        _upsert_nodes(conn, "Document", "id", pa.table({
            "id": [d.id for d in docs], "title": [d.title for d in docs],
            "metadata": [d.metadata for d in docs]}))
    fresh_entities: set[str] = set()  # ids with no edges yet: inserted in this step
    fresh_chunks: set[str] = set()
    if seg.entities:
        ents = list(seg.entities.values())
        fresh_entities |= _upsert_nodes(conn, "Entity", "id", _entity_table(ents, dim))
        for e in ents:
            delta.entities.pop(e.id, None)
            delta.entities[e.id] = e.embedding
    if seg.chunks:
        chunks = list(seg.chunks.values())
        fresh_chunks |= _upsert_nodes(conn, "Chunk", "id", _chunk_table(chunks, dim))
        for c in chunks:
            delta.chunks.pop(c.id, None)
            delta.chunks[c.id] = c.embedding
    if seg.relations or seg.mentions:
        ends = dict.fromkeys(i for s, _, t in seg.relations for i in (s, t))
        ends.update(dict.fromkeys(e for _, e in seg.mentions))
        fresh_entities |= _ensure_stubs(conn, "Entity", [i for i in ends if i not in seg.entities], dim)
    if seg.relations:
        _upsert_relations(conn, seg.relations, fresh_entities)
    if seg.mentions:
        absent = {c: d for c, d in seg.mention_docs.items() if c not in seg.chunks}
        fresh_chunks |= _ensure_stubs(conn, "Chunk", list(absent), dim, absent)
        _add_mentions(conn, list(seg.mentions), fresh_chunks, fresh_entities)
    if seg.kv:
        _apply_kv(conn, seg.kv)


def _entity_table(ents: list[WalEntity], dim: int) -> pa.Table:
    return pa.table({
        "id": [e.id for e in ents], "name": [e.name for e in ents], "type": [e.type for e in ents],
        "description": [e.description for e in ents], "properties": [e.properties for e in ents],
        "embedding": _vectors([e.embedding for e in ents], dim), "stub": pa.repeat(False, len(ents)),
    })


def _chunk_table(chunks: list[WalChunk], dim: int) -> pa.Table:
    return pa.table({
        "id": [c.id for c in chunks], "document_id": [c.document_id for c in chunks],
        "text": [c.text for c in chunks], "position": pa.array([c.position for c in chunks], pa.int64()),
        "embedding": _vectors([c.embedding for c in chunks], dim), "stub": pa.repeat(False, len(chunks)),
    })


def _vectors(blobs: list[bytes], dim: int) -> pa.Array:
    flat = np.frombuffer(b"".join(blobs), dtype="<f4").copy()
    flat[flat == 0] = 0  # -0.0 -> +0.0: Kuzu's COPY keeps the sign of zero only sometimes
    values = pa.array(flat, pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, dim)


def _ensure_stubs(
    conn: kuzu.Connection, table: str, ids: list[str], dim: int, docs: dict[str, str] | None = None
) -> set[str]:
    """Insert a stub for each absent id (columns in schema order, content NULL); returns those ids."""
    if not ids:
        return set()
    present = set(_col(conn, f"LOAD FROM $t MATCH (n:{table} {{id: u_id}}) RETURN n.id", _ids(ids)))
    missing = [i for i in ids if i not in present]
    if not missing:
        return set()
    n, s = len(missing), pa.string()
    vec = pa.nulls(n, pa.list_(pa.float32(), dim))
    if table == "Entity":
        cols = {"id": missing, "name": pa.nulls(n, s), "type": pa.nulls(n, s),
                "description": pa.nulls(n, s), "properties": pa.nulls(n, s)}
    else:
        cols = {"id": missing, "document_id": [docs[i] for i in missing], "text": pa.nulls(n, s),
                "position": pa.nulls(n, pa.int64())}
    _insert_nodes(conn, table, pa.table({**cols, "embedding": vec, "stub": pa.repeat(True, n)}))
    return set(missing)


def _upsert_nodes(conn: kuzu.Connection, table: str, key: str, rows: pa.Table) -> set[str]:
    """Overwrite the rows whose key exists, insert the others; returns the inserted keys."""
    keys = rows.column(key)
    existing = _col(conn, f"LOAD FROM $t MATCH (n:{table} {{{key}: u_{key}}}) RETURN n.{key}",
                    _prefixed(rows.select([key])))
    if existing:
        known = pc.is_in(keys, value_set=pa.array(existing, pa.string()))
        cols = [c for c in rows.column_names if c != key]
        sets = ", ".join(f"n.{c} = u_{c}" for c in cols)
        conn.execute(f"LOAD FROM $t MATCH (n:{table} {{{key}: u_{key}}}) SET {sets}",
                     {"t": _prefixed(rows.filter(known))})
        rows = rows.filter(pc.invert(known))
    _insert_nodes(conn, table, rows)
    return set(rows.column(key).to_pylist())


def _insert_nodes(conn: kuzu.Connection, table: str, rows: pa.Table) -> None:
    if rows.num_rows == 0:
        return
    if rows.num_rows >= NODE_COPY_MIN_ROWS and table in _COPY_SAFE_NODE_TABLES:
        conn.execute(f"COPY {table} FROM $t", {"t": rows})  # columns are in schema order
        return
    props = ", ".join(f"{c}: u_{c}" for c in rows.column_names)
    conn.execute(f"LOAD FROM $t CREATE (n:{table} {{{props}}})", {"t": _prefixed(rows)})


def _upsert_relations(
    conn: kuzu.Connection, rels: dict[tuple[str, str, str], WalRelation], fresh: set[str]
) -> None:
    # An edge can only exist already if both endpoints existed before this step.
    maybe = [r for (s, _, t), r in rels.items() if s not in fresh and t not in fresh]
    existing: set[tuple[str, str, str]] = set()
    if maybe:
        found = conn.execute(
            "LOAD FROM $t MATCH (a:Entity {id: u_from})-[r:RELATES]->(b:Entity {id: u_to})"
            " WHERE r.type = u_type SET r.weight = u_weight, r.properties = u_properties,"
            " r.chunks = u_chunks RETURN a.id, r.type, b.id",
            {"t": _prefixed(_relation_table(maybe))},
        ).get_all()
        existing = {(s, ty, t) for s, ty, t in found}
    new = [r for k, r in rels.items() if k not in existing]
    _insert_rels(conn, "RELATES", _relation_table(new),
                 "{type: u_type, weight: u_weight, properties: u_properties, chunks: u_chunks}")


def _relation_table(rels: list[WalRelation]) -> pa.Table:
    return pa.table({
        "from": [r.source for r in rels], "to": [r.target for r in rels], "type": [r.type for r in rels],
        "weight": pa.array([r.weight + 0.0 for r in rels], pa.float64()),  # -0.0 -> +0.0, as above
        "properties": [r.properties for r in rels],
        "chunks": pa.array([r.chunks for r in rels], pa.list_(pa.string())),
    })


def _add_mentions(
    conn: kuzu.Connection, pairs: list[tuple[str, str]], fresh_chunks: set[str], fresh_entities: set[str]
) -> None:
    maybe = [p for p in pairs if p[0] not in fresh_chunks and p[1] not in fresh_entities]
    existing: set[tuple[str, str]] = set()
    if maybe:
        found = conn.execute(
            "LOAD FROM $t MATCH (c:Chunk {id: u_from})-[:MENTIONS]->(e:Entity {id: u_to})"
            " RETURN c.id, e.id", {"t": _prefixed(_pairs(maybe))}).get_all()
        existing = {(c, e) for c, e in found}
    _insert_rels(conn, "MENTIONS", _pairs([p for p in pairs if p not in existing]), "")


def _pairs(pairs: list[tuple[str, str]]) -> pa.Table:
    return pa.table({"from": [p[0] for p in pairs], "to": [p[1] for p in pairs]})


def _insert_rels(conn: kuzu.Connection, rel: str, rows: pa.Table, props: str) -> None:
    if rows.num_rows == 0:
        return
    src, dst = ("Chunk", "Entity") if rel == "MENTIONS" else ("Entity", "Entity")
    if rows.num_rows >= REL_COPY_MIN_ROWS and rows.num_rows >= _count_rels(conn, rel):
        conn.execute(f"COPY {rel} FROM $t", {"t": rows})
        return
    conn.execute(f"LOAD FROM $t MATCH (a:{src} {{id: u_from}}) MATCH (b:{dst} {{id: u_to}})"
                 f" CREATE (a)-[:{rel} {props}]->(b)", {"t": _prefixed(rows)})


def _count_rels(conn: kuzu.Connection, rel: str) -> int:
    return int(conn.execute(f"MATCH ()-[r:{rel}]->() RETURN count(*)").get_all()[0][0])


def _apply_kv(conn: kuzu.Connection, kv: dict[str, str | None]) -> None:
    gone = [k for k, v in kv.items() if v is None]
    if gone:
        conn.execute("LOAD FROM $t MATCH (k:KV {key: u_key}) DELETE k", {"t": pa.table({"u_key": gone})})
    puts = [(k, v) for k, v in kv.items() if v is not None]
    if puts:
        _upsert_nodes(conn, "KV", "key", pa.table({
            "key": [k for k, _ in puts], "value": [v for _, v in puts]}))


# ---------------------------------------------------------------------------------------------------
# Small helpers


def _ids(ids: Iterable[str]) -> pa.Table:
    return pa.table({"u_id": pa.array(list(dict.fromkeys(ids)), pa.string())})


def _prefixed(t: pa.Table) -> pa.Table:
    # LOAD FROM exposes columns as bare variables: a prefix keeps them apart from n, e, a, b...
    return t.rename_columns([f"u_{c}" for c in t.column_names])


def _col(conn: kuzu.Connection, query: str, t: pa.Table) -> list[str]:
    return [row[0] for row in conn.execute(query, {"t": t}).get_all()]
