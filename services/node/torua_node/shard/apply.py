"""Apply write-ahead-log entries to one shard replica, exactly once and deterministically.

`apply_batch` runs on the shard's thread. The stored `applied_seq` (with the fingerprint of the entry
there, `wal.fingerprint`) moves in the same Kuzu transaction as the mutations, so redelivery, replay
and restart never apply an entry twice nor skip one. A batch is one transaction, or one per run of
entries starting at each entry that deletes; if a transaction fails on the entries' content, its
entries are retried one per transaction, and an entry that fails on its own is recorded in `Failure`
and skipped, identically on every replica.

Only a verdict on the entry itself is skipped (`is_entry_fault`: undecodable or invalid entries,
Kuzu's binder, parser, conversion, overflow, catalog, copy and runtime errors). Anything else —
memory (MemoryError, Kuzu's buffer manager), I/O (OSError, Kuzu's IO exception), the storage's own
state (checkpoint, transaction manager, storage exceptions), or an error never seen before — says
nothing about the entry: another replica would apply it, so skipping it here would make the replicas
differ. The batch stops there (`ApplyResult.error`) and the replica retries the rest from the log.

Consecutive entries without deletes are coalesced into one bulk step per table (last write wins per
key, mentions are a set): the result equals applying them one by one because upserts replace whole
rows and stubs are only ever created for absent ids.

kuzu 0.11.3 storage bugs this module works around (each reproduced here; all fixed in the fork
ladybug 0.22): COPY mixed with CREATE/SET in one transaction (crash or misplaced values), DETACH
DELETE of a node with a self-loop (phantom edge), a checkpoint after deleting edges inserted since
the last checkpoint (SIGSEGV on the next read), NULLs in a column with deleted rows (values shifted
at checkpoint), FLOAT[n] updates (old vectors copied into new rows; schema.py stores BLOBs).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

import kuzu
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torua.text import entity_text
from torua_node.shard.wal import (
    WalChunk,
    WalDocument,
    WalEntity,
    WalEntry,
    WalRelation,
    decode_entry,
    fingerprint,
)
from torua_node.storage.keyspace import known_keys, table_size
from torua_node.storage.schema import APPLIED_FP_KEY, APPLIED_SEQ_KEY, read_applied_seq
from torua_node.storage.statements import id_rows, run
from torua_node.storage.store import is_transient
from torua_node.storage.tables import (
    CHUNK,
    DOCUMENT,
    ENTITY,
    KV,
    MENTIONS,
    REL_TABLES,
    RELATES,
    STUB,
    TABLES,
    NodeTable,
    RelTable,
)

if TYPE_CHECKING:
    from torua_node.storage.textindex import TextIndex
    from torua_node.storage.vectors import VectorIndex

__all__ = ["ApplyResult", "apply_batch", "is_entry_fault", "ENTRY_FAULTS"]

# Inserts use `LOAD FROM $arrow CREATE`, never `COPY`: in kuzu 0.11.3 a COPY into a table that the
# same transaction also writes with CREATE/SET crashed the process or misplaced values at checkpoint
# (found by fuzzing), and into a non-empty rel table it costs time proportional to the whole table.
MAX_ERROR_LEN = 300
# How Kuzu's errors start when they are its verdict on the statement, and so on the entry: the same
# on every replica holding the same content. Every other error stops apply instead (module docstring).
ENTRY_FAULTS = ("Binder exception", "Parser exception", "Conversion exception", "Overflow exception",
                "Catalog exception", "Copy exception", "Runtime exception")
# pyarrow's verdicts on the values (ArrowMemoryError and ArrowIOError are not among them).
_ARROW_FAULTS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowIndexError, pa.ArrowKeyError,
                 pa.ArrowNotImplementedError)
_JSON = msgspec.json.Encoder()
_INT64 = (-(1 << 63), (1 << 63) - 1)
# Explicit Arrow types (from the table declarations): inferring them from Python lists costs ~10x
# more (pyarrow tries to import dateutil on every call when it is not installed).
_SCHEMAS: dict[str, pa.Schema] = {t.name: t.arrow_schema() for t in TABLES}
_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


@dataclass(slots=True)
class ApplyResult:
    """What a batch did. The vector and text fields are net changes for the in-memory indexes:
    apply `*_removed` and `*_ids`/`*_vectors`/`*_texts` in either order (the id sets are disjoint).

    `error` is set when a transient failure (memory, disk) stopped the batch early: entries after
    `applied_seq` were not applied and must be delivered again, to a reopened database."""

    applied_seq: int
    dim: int
    applied: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)
    entity_ids: list[str] = field(default_factory=list)
    entity_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    entity_texts: list[str] = field(default_factory=list)
    entities_removed: list[str] = field(default_factory=list)
    chunk_ids: list[str] = field(default_factory=list)
    chunk_vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    chunk_texts: list[str] = field(default_factory=list)
    chunks_removed: list[str] = field(default_factory=list)
    error: str | None = None

    def update_indexes(self, entities: VectorIndex, chunks: VectorIndex) -> None:
        entities.remove(self.entities_removed)
        entities.upsert(self.entity_ids, self.entity_vectors)
        chunks.remove(self.chunks_removed)
        chunks.upsert(self.chunk_ids, self.chunk_vectors)

    def update_text_indexes(self, entities: TextIndex, chunks: TextIndex) -> None:
        entities.remove(self.entities_removed)
        entities.upsert(zip(self.entity_ids, self.entity_texts))
        chunks.remove(self.chunks_removed)
        chunks.upsert(zip(self.chunk_ids, self.chunk_texts))


class _Poison(Exception):
    """An entry rejected before it reaches Kuzu (same verdict on every replica)."""


def is_entry_fault(exc: BaseException) -> bool:
    """Whether an error applying an entry is a verdict on the entry (deterministic: skip it), rather
    than on this replica's memory, disk or storage (retry later)."""
    if isinstance(exc, (MemoryError, OSError)) or is_transient(exc):
        return False
    if isinstance(exc, pa.ArrowException):
        return isinstance(exc, _ARROW_FAULTS)
    return isinstance(exc, RuntimeError) and str(exc).startswith(ENTRY_FAULTS)


_Item = tuple[int, "WalEntry | _Poison"]
# Beyond this many, a bulk load is under way: stop tracking (memory) and let the next delete checkpoint.
_MAX_TRACKED_EDGE_ENDS = 100_000


@dataclass(slots=True)
class _Memory:
    """What apply remembers about one open database between batches, beside its known keys
    (keyspace.py)."""

    # Ids of the nodes that got an edge since this module's last checkpoint; None until the first
    # one (after a restart anything may still be in memory).
    new_edge_ends: set[str] | None = None


_MEMORY: weakref.WeakKeyDictionary[kuzu.Database, _Memory] = weakref.WeakKeyDictionary()


def _memory(conn: kuzu.Connection) -> _Memory:
    mem = _MEMORY.get(conn.database)
    if mem is None:
        mem = _MEMORY[conn.database] = _Memory()
    return mem


@dataclass(slots=True)
class _Delta:
    """Net index changes, id -> (float32 bytes, indexed text) (upsert) or None (removed); later
    changes win."""

    entities: dict[str, tuple[bytes, str] | None] = field(default_factory=dict)
    chunks: dict[str, tuple[bytes, str] | None] = field(default_factory=dict)

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


def _put_last(d: dict[_K, _V], items: Iterable[tuple[_K, _V]]) -> None:
    for k, v in items:
        d.pop(k, None)
        d[k] = v


# ---------------------------------------------------------------------------------------------------
# Entry point


def apply_batch(conn: kuzu.Connection, batch: list[tuple[int, bytes]], dim: int) -> ApplyResult:
    """Apply `(stream seq, raw entry)` pairs (increasing seq); entries at or below the stored
    applied_seq are skipped."""
    result = ApplyResult(applied_seq=read_applied_seq(conn), dim=dim)
    # Learnt outside any transaction: read inside one after its deletes, then rolled back, it would
    # miss rows that exist.
    known_keys(conn)
    todo: list[_Item] = []
    fps: dict[int, int] = {}
    last = result.applied_seq
    for seq, raw in batch:
        if seq <= last:
            continue  # redelivery or replay of something already applied
        last = seq
        fps[seq] = fingerprint(raw)
        try:
            todo.append((seq, _decode(raw, dim)))
        except _Poison as p:
            todo.append((seq, p))
    delta = _Delta()
    for group in _groups(todo):
        head = group[0][1]
        if isinstance(head, WalEntry) and _has_deletes(head):
            if not _checkpoint_before_deletes(conn, head, result):
                break
        if not _apply_group(conn, group, result, delta, fps):
            break
    return _finish(result, delta, dim)


def _groups(todo: list[_Item]) -> list[list[_Item]]:
    """One transaction per group: a new group starts at each entry that deletes."""
    groups: list[list[_Item]] = []
    for item in todo:
        if not groups or _has_deletes(item[1]):
            groups.append([])
        groups[-1].append(item)
    return groups


def _has_deletes(item: WalEntry | _Poison) -> bool:
    return isinstance(item, WalEntry) and bool(item.delete_entities or item.delete_documents)


def _checkpoint_before_deletes(conn: kuzu.Connection, entry: WalEntry, result: ApplyResult) -> bool:
    # kuzu 0.11.3 crashes (SIGSEGV on a later read) when a checkpoint follows the deletion of edges
    # inserted since the previous checkpoint (stale CSR index entries; fixed in the fork ladybug,
    # PR #612). So a delete that may reach such an edge first checkpoints, making it an on-disk one.
    # Only when needed: each checkpoint rewrites the whole adjacency data of the touched node groups.
    mem = _memory(conn)
    recent = mem.new_edge_ends
    if recent is not None:
        reached = set(entry.delete_entities)
        if entry.delete_documents:
            reached.update(_chunks_of(conn, id_rows(entry.delete_documents)))
        if recent.isdisjoint(reached):
            return True
    try:
        conn.execute("CHECKPOINT")
    except RuntimeError as exc:
        result.error = f"checkpoint before delete: {exc}"[:MAX_ERROR_LEN]
        return False
    mem.new_edge_ends = set()
    return True


def _apply_group(
    conn: kuzu.Connection, group: list[_Item], result: ApplyResult, delta: _Delta, fps: dict[int, int]
) -> bool:
    """Apply a group in one transaction, or entry by entry if that fails; False if stopped early."""
    one = _Delta()
    try:
        _in_tx(conn, lambda: _apply_items(conn, group, one, fps))
    except Exception as exc:  # noqa: BLE001 - rolled back; retried entry by entry if an entry's fault
        if not is_entry_fault(exc):
            # Not the entries' fault, and kuzu 0.11.3 may crash (SIGSEGV) when a database whose
            # buffer pool ran out is used again: stop here, the replica reopens it and retries.
            result.error = _error_text(group[0][0], exc)
            return False
        return _apply_one_by_one(conn, group, result, delta, fps)
    _count(result, group)
    delta.merge(one)
    result.applied_seq = group[-1][0]
    return True


def _apply_one_by_one(
    conn: kuzu.Connection, group: list[_Item], result: ApplyResult, delta: _Delta, fps: dict[int, int]
) -> bool:
    """Each entry in its own transaction; stops (result.error) at a failure that is not the entry's."""
    for seq, item in group:
        one = _Delta()
        try:
            _in_tx(conn, partial(_apply_items, conn, [(seq, item)], one, fps))
        except Exception as exc:  # noqa: BLE001 - recorded if the entry's fault, else retried later
            if not _record_poison(conn, seq, exc, result, fps[seq]):
                return False
        else:
            _count(result, [(seq, item)])
            delta.merge(one)
        result.applied_seq = seq
    return True


def _record_poison(conn: kuzu.Connection, seq: int, exc: Exception, result: ApplyResult, fp: int) -> bool:
    """Record the entry as poison; False (and result.error) if the failure was not the entry's."""
    # Never recorded as poison: another replica with more memory (or a healthy disk) would apply
    # the entry, and the replicas would diverge.
    if not is_entry_fault(exc):
        result.error = _error_text(seq, exc)
        return False
    error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LEN]
    try:
        _in_tx(conn, lambda: _record_failure(conn, seq, error, fp))
    except Exception as exc2:  # noqa: BLE001 - could not even record it: retry later
        result.error = _error_text(seq, exc2)
        return False
    result.failures.append((seq, error))
    return True


def _error_text(seq: int, exc: BaseException) -> str:
    return f"seq {seq}: {type(exc).__name__}: {exc}"[:MAX_ERROR_LEN]


def _count(result: ApplyResult, items: list[_Item]) -> None:
    for seq, item in items:
        if isinstance(item, _Poison):
            result.failures.append((seq, str(item)))
        else:
            result.applied += 1


def _finish(result: ApplyResult, delta: _Delta, dim: int) -> ApplyResult:
    r = result
    r.entity_ids, r.entity_vectors, r.entity_texts, r.entities_removed = _split(delta.entities, dim)
    r.chunk_ids, r.chunk_vectors, r.chunk_texts, r.chunks_removed = _split(delta.chunks, dim)
    return r


def _split(
    changes: dict[str, tuple[bytes, str] | None], dim: int
) -> tuple[list[str], np.ndarray, list[str], list[str]]:
    upserts = [(k, v) for k, v in changes.items() if v is not None]
    blob = b"".join(v[0] for _, v in upserts)
    matrix = np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=True).reshape(len(upserts), dim)
    return ([k for k, _ in upserts], matrix, [v[1] for _, v in upserts],
            [k for k, v in changes.items() if v is None])


def _in_tx(conn: kuzu.Connection, fn: Callable[[], object]) -> None:
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
    for r in entry.relations:
        # Kuzu's DOUBLE compression may turn NaN into 0.0 at checkpoint, depending on the neighbouring
        # values, so replicas could differ: refuse it (and infinities, as meaningless weights).
        if not math.isfinite(r.weight):
            raise _Poison(f"relation {r.source[:100]!r}-{r.type[:100]}->{r.target[:100]!r}:"
                          " weight is NaN or infinite")
    return entry


# ---------------------------------------------------------------------------------------------------
# One transaction's worth of entries


def _apply_items(conn: kuzu.Connection, items: list[_Item], delta: _Delta, fps: dict[int, int]) -> None:
    seg = _Upserts()
    for seq, item in items:
        if isinstance(item, _Poison):
            _record_failure(conn, seq, str(item), None)
            continue  # a poison entry changes nothing, so coalescing may continue across it
        if item.delete_entities or item.delete_documents:
            _apply_upserts(conn, seg, delta)
            seg = _Upserts()
            _delete_entities(conn, item.delete_entities, delta)
            _delete_documents(conn, item.delete_documents, delta)
        seg.add(item)
    _apply_upserts(conn, seg, delta)
    last = items[-1][0]
    _set_applied_seq(conn, last, fps[last])


def _set_applied_seq(conn: kuzu.Connection, seq: int, fp: int) -> None:
    conn.execute("MERGE (m:Meta {key: $k}) SET m.value = $v MERGE (f:Meta {key: $fk}) SET f.value = $fv",
                 {"k": APPLIED_SEQ_KEY, "v": seq, "fk": APPLIED_FP_KEY, "fv": fp})


def _record_failure(conn: kuzu.Connection, seq: int, error: str, fp: int | None) -> None:
    """Record a poison entry; with its fingerprint, also move applied_seq to it."""
    conn.execute("MERGE (f:Failure {seq: $s}) SET f.error = $e", {"s": seq, "e": error})
    if fp is not None:
        _set_applied_seq(conn, seq, fp)


# ---------------------------------------------------------------------------------------------------
# Deletes


def _delete_entities(conn: kuzu.Connection, ids: list[str], delta: _Delta) -> None:
    if not ids:
        return
    t = id_rows(ids)
    keys = table_size(conn, ENTITY.name)
    found = run(conn, "MATCH (e:Entity {id: u_id}) RETURN e.id", t, keys)[0]
    if not found:
        return
    t = id_rows(found)
    near = run(conn, "MATCH (e:Entity {id: u_id})-[:RELATES]-(n:Entity) WHERE n.stub"
                     " RETURN DISTINCT n.id", t, keys)[0]
    near_chunks = run(conn, "MATCH (c:Chunk)-[:MENTIONS]->(e:Entity {id: u_id})"
                            " WHERE c.stub RETURN DISTINCT c.id", t, keys)[0]
    _delete_nodes(conn, ENTITY, t)
    for i in found:
        delta.entities.pop(i, None)
        delta.entities[i] = None
    gone = set(found)
    _drop_orphan_stubs(conn, ENTITY, [i for i in near if i not in gone])
    _drop_orphan_stubs(conn, CHUNK, near_chunks)


def _delete_documents(conn: kuzu.Connection, ids: list[str], delta: _Delta) -> None:
    if not ids:
        return
    t = id_rows(ids)
    chunks = _chunks_of(conn, t)
    if chunks:
        ct = id_rows(chunks)
        near = run(conn, "MATCH (c:Chunk {id: u_id})-[:MENTIONS]->(e:Entity) WHERE e.stub"
                         " RETURN DISTINCT e.id", ct, table_size(conn, CHUNK.name))[0]
        _delete_nodes(conn, CHUNK, ct)
        for i in chunks:
            delta.chunks.pop(i, None)
            delta.chunks[i] = None
        _drop_orphan_stubs(conn, ENTITY, near)
    _delete_nodes(conn, DOCUMENT, t)


def _chunks_of(conn: kuzu.Connection, documents: pa.Table) -> list[str]:
    """Ids of the chunks (real or stub) of these documents (`id_rows` table)."""
    # Not a key lookup (document_id has no index): always one scan, never one per document.
    return run(conn, "MATCH (c:Chunk) WHERE c.document_id = u_id RETURN c.id", documents, 0)[0]


def _edges_of(table: NodeTable) -> tuple[str, ...]:
    """Each rel table and direction touching a node table, for deleting a node's edges before the node."""
    out: list[str] = []
    for rel in REL_TABLES:
        if rel.source == table:
            out.append(f"-[r:{rel.name}]->()")
        if rel.target == table:
            out.append(f"<-[r:{rel.name}]-()")
    return tuple(out)


_EDGES = {t.name: _edges_of(t) for t in (ENTITY, CHUNK, DOCUMENT)}


def _delete_nodes(conn: kuzu.Connection, table: NodeTable, ids: pa.Table) -> None:
    """Delete the nodes whose key is among `ids` (`id_rows` table), and their edges."""
    # Not DETACH DELETE: in kuzu 0.11.3 it mishandles self-loops (a RELATES a) and leaves a phantom
    # edge on a neighbour that then can never be deleted. Deleting edges one direction at a time first
    # keeps the adjacency lists consistent.
    keys = table_size(conn, table.name)
    match = f"MATCH (n:{table.name} {{{table.key}: u_id}})"
    for edge in _EDGES[table.name]:
        run(conn, f"{match}{edge} DELETE r", ids, keys)
    run(conn, f"{match} DELETE n", ids, keys)


def _drop_orphan_stubs(conn: kuzu.Connection, table: NodeTable, ids: list[str]) -> None:
    # Only stubs next to something deleted can become orphans, so checking those keeps the
    # invariant "no stub without an edge" after every entry.
    if ids:
        run(conn, f"MATCH (n:{table.name} {{{table.key}: u_id}}) WHERE n.{STUB}"
                  " AND NOT EXISTS { MATCH (n)-[]-() } DELETE n", id_rows(ids), table_size(conn, table.name))


# ---------------------------------------------------------------------------------------------------
# Upserts


def _apply_upserts(conn: kuzu.Connection, seg: _Upserts, delta: _Delta) -> None:
    if seg.documents:
        _upsert_nodes(conn, DOCUMENT, _node_rows(DOCUMENT, list(seg.documents.values())))
    if seg.entities:
        ents = list(seg.entities.values())
        _upsert_nodes(conn, ENTITY, _node_rows(ENTITY, ents))
        for e in ents:
            delta.entities.pop(e.id, None)
            delta.entities[e.id] = (e.embedding, entity_text(e.name, e.description))
    if seg.chunks:
        chunks = list(seg.chunks.values())
        _upsert_nodes(conn, CHUNK, _node_rows(CHUNK, chunks))
        for c in chunks:
            delta.chunks.pop(c.id, None)
            delta.chunks[c.id] = (c.embedding, c.text)
    if seg.relations or seg.mentions:
        ends = dict.fromkeys(i for s, _, t in seg.relations for i in (s, t))
        ends.update(dict.fromkeys(e for _, e in seg.mentions))
        _ensure_stubs(conn, ENTITY, [i for i in ends if i not in seg.entities])
    if seg.relations:
        _upsert_edges(conn, RELATES, list(seg.relations), _relation_rows(list(seg.relations.values())))
    if seg.mentions:
        absent = {c: d for c, d in seg.mention_docs.items() if c not in seg.chunks}
        _ensure_stubs(conn, CHUNK, list(absent), absent)
        pairs = list(seg.mentions)
        _upsert_edges(conn, MENTIONS, pairs, _pair_rows(pairs))
    if seg.kv:
        _apply_kv(conn, seg.kv)


def _node_rows(table: NodeTable, rows: Sequence[WalEntity | WalChunk | WalDocument]) -> pa.Table:
    """Real (not stub) rows of `table` from WAL rows, whose fields are its columns (but the stub flag)."""
    cols: dict[str, Any] = {c: list(map(attrgetter(c), rows)) for c in table.column_names if c != STUB}
    if table.stubbed:
        cols[STUB] = pa.repeat(False, len(rows))
    return pa.table(cols, schema=_SCHEMAS[table.name])


def _ensure_stubs(
    conn: kuzu.Connection, table: NodeTable, ids: list[str], owners: dict[str, str] | None = None
) -> None:
    """Insert a stub (key and owner only, content empty) for each absent id; `owners` gives each id's
    owner column (a chunk's document_id) when that is not the key itself."""
    if not ids:
        return
    maybe = [i for i, m in zip(ids, known_keys(conn)[table.name].maybe(ids)) if m]
    query = f"MATCH (n:{table.name} {{{table.key}: u_id}}) RETURN n.{table.key}"
    present = set(run(conn, query, id_rows(maybe), table_size(conn, table.name))[0]) if maybe else set()
    missing = [i for i in ids if i not in present]
    if not missing:
        return
    # Empty values, not NULL: in kuzu 0.11.3 NULLs in a column that also has deleted rows get other
    # rows' values after an update and a checkpoint (found by fuzzing; without NULLs it holds).
    n = len(missing)
    cols: dict[str, Any] = {}
    for c in table.columns:
        if c.name == table.key:
            cols[c.name] = missing
        elif c.name == STUB:
            cols[c.name] = pa.repeat(True, n)
        elif c.name == table.owner:
            if owners is None:
                raise ValueError(f"stubs of {table.name} need their {c.name}")
            cols[c.name] = [owners[i] for i in missing]
        else:
            cols[c.name] = [c.empty] * n
    _insert_nodes(conn, table, pa.table(cols, schema=_SCHEMAS[table.name]))


def _upsert_nodes(conn: kuzu.Connection, table: NodeTable, rows: pa.Table) -> None:
    """Overwrite the rows whose key exists, insert the others."""
    key = table.key
    keys = rows.column(key)
    size = table_size(conn, table.name)
    maybe = rows.select([key]).filter(pa.array(known_keys(conn)[table.name].maybe(keys.to_pylist())))
    match = f"MATCH (n:{table.name} {{{key}: u_{key}}})"
    existing = run(conn, f"{match} RETURN n.{key}", _prefixed(maybe), size)[0] if maybe.num_rows else []
    if existing:
        known = pc.is_in(keys, value_set=pa.array(existing, pa.string()))
        sets = ", ".join(f"n.{c} = u_{c}" for c in rows.column_names if c != key)
        run(conn, f"{match} SET {sets}", _prefixed(rows.filter(known)), size)
        rows = rows.filter(pc.invert(known))
    _insert_nodes(conn, table, rows)


def _insert_nodes(conn: kuzu.Connection, table: NodeTable, rows: pa.Table) -> None:
    if rows.num_rows:
        # Noted before the transaction commits: a superset is safe.
        known_keys(conn)[table.name].add(rows.column(table.key).to_pylist())
        # No MATCH, so no scan: always set-at-a-time.
        props = ", ".join(f"{c}: u_{c}" for c in rows.column_names)
        conn.execute(f"LOAD FROM $t CREATE (n:{table.name} {{{props}}})", {"t": _prefixed(rows)})


def _relation_rows(rels: list[WalRelation]) -> pa.Table:
    return pa.table({
        "from": [r.source for r in rels], "to": [r.target for r in rels], "type": [r.type for r in rels],
        # -0.0 + 0.0 is +0.0: Kuzu keeps the sign of a zero DOUBLE only sometimes.
        "weight": [r.weight + 0.0 for r in rels],
        "properties": [r.properties for r in rels],
        "chunks": [_json_list(r.chunks) for r in rels],
    }, schema=_SCHEMAS[RELATES.name])


def _pair_rows(pairs: list[tuple[str, str]]) -> pa.Table:
    return pa.table({"from": [p[0] for p in pairs], "to": [p[1] for p in pairs]}, schema=_SCHEMAS[MENTIONS.name])


def _json_list(items: Sequence[str]) -> str:
    return _JSON.encode(items).decode() if items else "[]"


def _edge_match(rel: RelTable) -> str:
    """Matches the edges of `rel` between the rows' `from` and `to` keys (any key properties aside)."""
    return (f"MATCH (a:{rel.source.name} {{{rel.source.key}: u_from}})-[r:{rel.name}]->"
            f"(b:{rel.target.name} {{{rel.target.key}: u_to}})")


def _upsert_edges(conn: kuzu.Connection, rel: RelTable, keys: Sequence[tuple[str, ...]], rows: pa.Table) -> None:
    """Overwrite the properties of the edges whose key (`keys`, one per row: source, *key properties,
    target) exists, insert the others."""
    maybe = known_keys(conn)[rel.name].maybe(keys)
    if maybe.any():
        where = " AND ".join(f"r.{c} = u_{c}" for c in rel.key)
        sets = ", ".join(f"r.{c.name} = u_{c.name}" for c in rel.values)
        query = (f"{_edge_match(rel)}{f' WHERE {where}' if where else ''}{f' SET {sets}' if sets else ''}"
                 f" RETURN {', '.join(rel.key_items())}")
        found = run(conn, query, _prefixed(rows.filter(pa.array(maybe))),
                    table_size(conn, rel.source.name, rel.target.name, rel.name))
        existing = set(zip(*found))
        if existing:
            rows = rows.filter(pa.array([k not in existing for k in keys]))
    _insert_rels(conn, rel, rows)


def _insert_rels(conn: kuzu.Connection, rel: RelTable, rows: pa.Table) -> None:
    if rows.num_rows == 0:
        return
    mem, known = _memory(conn), known_keys(conn)
    sources, targets = rows.column("from").to_pylist(), rows.column("to").to_pylist()
    # Noted before the transaction commits: a superset is safe.
    known[rel.name].add(list(zip(sources, *(rows.column(c).to_pylist() for c in rel.key), targets)))
    if mem.new_edge_ends is not None:
        mem.new_edge_ends.update(sources)
        mem.new_edge_ends.update(targets)
        if len(mem.new_edge_ends) > _MAX_TRACKED_EDGE_ENDS:
            mem.new_edge_ends = None  # unknown again: the next delete checkpoints first
    props = f" {{{', '.join(f'{c}: u_{c}' for c in rel.column_names)}}}" if rel.columns else ""
    src, dst = rel.source, rel.target
    # Two MATCH clauses: a comma pattern is planned as a cross product and exhausts the buffer pool.
    run(conn, f"MATCH (a:{src.name} {{{src.key}: u_from}}) MATCH (b:{dst.name} {{{dst.key}: u_to}})"
              f" CREATE (a)-[:{rel.name}{props}]->(b)",
        _prefixed(rows), table_size(conn, src.name, dst.name))


def _apply_kv(conn: kuzu.Connection, kv: dict[str, str | None]) -> None:
    gone = [k for k, v in kv.items() if v is None]
    if gone:
        run(conn, f"MATCH (n:{KV.name} {{{KV.key}: u_key}}) DELETE n",
            pa.table({"u_key": pa.array(gone, pa.string())}), table_size(conn, KV.name))
    puts = [(k, v) for k, v in kv.items() if v is not None]
    if puts:
        _upsert_nodes(conn, KV, pa.table({
            "key": [k for k, _ in puts], "value": [v for _, v in puts]}, schema=_SCHEMAS[KV.name]))


# ---------------------------------------------------------------------------------------------------
# Small helpers


def _prefixed(t: pa.Table) -> pa.Table:
    # LOAD FROM exposes columns as bare variables: a prefix keeps them apart from n, e, a, b...
    return t.rename_columns([f"u_{c}" for c in t.column_names])

