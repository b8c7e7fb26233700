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
state (checkpoint, transaction manager, storage exceptions, a write-write conflict: apply is the
only writer, so one comes from a rolled-back transaction), or an error never seen before — says
nothing about the entry: another replica would apply it, so skipping it here would make the replicas
differ. The batch stops there (`ApplyResult.error`) and the replica retries the rest from the log.

Consecutive entries without deletes are coalesced into one bulk step per table (the newest write
wins per key, mentions are a set): the result equals applying them one by one because upserts
replace whole rows and stubs are only ever created for absent ids.

Entities and relations apply last-writer-wins by the entry's `version` (torua.hlc, one per write,
the same on every shard; 0 for entries written before versions existed, which then take their log
position), so a relation's two copies (its source's and its target's shard) and an entity's delete
fanned out to every shard end equal whatever order each shard's log holds the writes in. Per key,
`Version` holds the version of the stored write and `Tombstone` the newest delete (an entity's delete
also deletes its relations, so it counts as a delete of each). A write is stored only if its version
is at least both, and one that is older than a delete is dropped: a late, older upsert never
resurrects what a newer delete removed. Invariant: a Version row exists exactly for each stored
(live) entity and relation. The result is a function of the set of writes, not of their order, so
the digest of any permutation is the same (tests/unit/test_convergence.py). Tombstones older than
TOMBSTONE_RETENTION_MS (by entry versions, never the clock, so every replica purges at the same log
position) are purged; a write delayed longer than that could resurrect what it deleted. Mentions,
documents, chunks and kv are single-copy or sets and stay last-in-log.

kuzu 0.11.3 storage bugs this module works around (each reproduced here; all fixed in the fork
ladybug 0.22): COPY mixed with CREATE/SET in one transaction (crash or misplaced values), DETACH
DELETE of a node with a self-loop (phantom edge), a checkpoint after deleting edges inserted since
the last checkpoint (SIGSEGV on the next read), NULLs in a column with deleted rows (values shifted
at checkpoint), FLOAT[n] updates (old vectors copied into new rows; schema.py stores BLOBs). Not
known to be fixed: once a transaction that wrote was rolled back (the fallback above), the next ones
in the same database may fail with a write-write conflict on rows it wrote, in some runs and not
others (is_entry_fault: not the entry's fault, so the replica reopens and retries;
tests/unit/test_apply_fallback.py), and may crash the process (SIGSEGV: in a fuzz of the fallback,
~4% of random batches failing after all their statements ran, none of 520 failing at the entry).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

import kuzu
import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from torua.hlc import version_of, version_wall_ms
from torua.text import entity_text
from torua_node.shard.wal import (
    WalChunk,
    WalDocument,
    WalEntity,
    WalEntry,
    WalRelation,
    WalRelationKey,
    decode_entry,
    fingerprint,
)
from torua_node.storage.chunkview import ChunkRow, MentionChange, chunk_dropped, entity_cleared, mentioned
from torua_node.storage.graphview import EntityRow, RelKey, RelValue, entity_row, relation_item
from torua_node.storage.keyspace import known_keys, table_size
from torua_node.storage.schema import (
    APPLIED_FP_KEY,
    APPLIED_SEQ_KEY,
    TOMBSTONES_PURGED_KEY,
    read_applied_seq,
    read_tombstones_purged,
)
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
    TOMBSTONE,
    VERSION,
    NodeTable,
    RelTable,
    entity_version_key,
    relation_version_key,
)

if TYPE_CHECKING:
    from torua_node.storage.chunkview import ChunkView
    from torua_node.storage.graphview import GraphView
    from torua_node.storage.textindex import TextIndex
    from torua_node.storage.vectors import VectorIndex

__all__ = ["ApplyResult", "apply_batch", "is_entry_fault", "ENTRY_FAULTS", "TOMBSTONE_RETENTION_MS",
           "PURGE_EVERY_MS"]

# How long a delete keeps out older writes of what it deleted. A constant, not a per-node setting:
# every replica must purge the same tombstones at the same log position, or they would differ. Far
# longer than a write can take between its version and its log (the router's publish timeout, 10 s).
TOMBSTONE_RETENTION_MS = 60 * 60 * 1000
# Purged when an entry's version enters a new period of this length: one scan of Tombstone per period.
PURGE_EVERY_MS = 10 * 60 * 1000

# Inserts use `LOAD FROM $arrow CREATE`, never `COPY`: in kuzu 0.11.3 a COPY into a table that the
# same transaction also writes with CREATE/SET crashed the process or misplaced values at checkpoint
# (found by fuzzing), and into a non-empty rel table it costs time proportional to the whole table.
MAX_ERROR_LEN = 300
# How Kuzu's errors start when they are its verdict on the statement, and so on the entry: the same
# on every replica holding the same content. Every other error stops apply instead (module docstring).
ENTRY_FAULTS = ("Binder exception", "Parser exception", "Conversion exception", "Overflow exception",
                "Catalog exception", "Copy exception", "Runtime exception")
# Runtime exceptions that are the storage's state, not the entry: apply is the database's only writer,
# so a write-write conflict comes from the transaction rolled back before it (kuzu 0.11.3 may report
# one on rows that transaction wrote), and whether it is reported varies from run to run: skipping
# the entry would make replicas differ (a skipped delete leaves what it deleted on one replica).
_STATE_FAULTS = ("Runtime exception: Write-write conflict",)
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
    """What a batch did. The vector, text and graph fields are net changes for the in-memory indexes:
    apply `*_removed` and `*_ids`/`*_vectors`/`*_texts`/`*_rows`/`relations` in either order (the
    key sets are disjoint). `entity_rows` go with `entity_ids`; `relations` are the RELATES edges
    stored (inserted or overwritten), `relations_removed` those deleted, by an entity's delete too.

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
    entity_rows: list[EntityRow] = field(default_factory=list)
    relations: list[tuple[RelKey, RelValue]] = field(default_factory=list)
    relations_removed: list[RelKey] = field(default_factory=list)
    chunk_rows: list[ChunkRow] = field(default_factory=list)
    mentions: list[MentionChange] = field(default_factory=list)  # in the order apply made them
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

    def update_graph(self, view: GraphView) -> None:
        view.apply(zip(self.entity_ids, self.entity_rows), self.entities_removed, self.relations,
                   self.relations_removed)

    def update_chunks(self, view: ChunkView) -> None:
        view.apply(zip(self.chunk_ids, self.chunk_rows), self.chunks_removed, self.mentions)


class _Poison(Exception):
    """An entry rejected before it reaches Kuzu (same verdict on every replica)."""


def is_entry_fault(exc: BaseException) -> bool:
    """Whether an error applying an entry is a verdict on the entry (deterministic: skip it), rather
    than on this replica's memory, disk or storage (retry later)."""
    if isinstance(exc, (MemoryError, OSError)) or is_transient(exc) or str(exc).startswith(_STATE_FAULTS):
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
    # The stored TOMBSTONES_PURGED_KEY, as of the last commit; None until read.
    purged: int | None = None


_MEMORY: weakref.WeakKeyDictionary[kuzu.Database, _Memory] = weakref.WeakKeyDictionary()


def _memory(conn: kuzu.Connection) -> _Memory:
    mem = _MEMORY.get(conn.database)
    if mem is None:
        mem = _MEMORY[conn.database] = _Memory()
    return mem


@dataclass(slots=True)
class _Delta:
    """Net changes for the in-memory indexes, key -> the row stored (upsert) or None (removed);
    later changes win. Entities: vector, text and graph row; chunks: vector, text and chunk row;
    relations: (source, type, target) -> the relation (its graph edge); mentions: what happened to
    them, in order (`storage/chunkview.py` replays it: mentions change in ways whose order matters)."""

    entities: dict[str, WalEntity | None] = field(default_factory=dict)
    chunks: dict[str, WalChunk | None] = field(default_factory=dict)
    relations: dict[tuple[str, str, str], WalRelation | None] = field(default_factory=dict)
    mentions: list[MentionChange] = field(default_factory=list)

    def merge(self, other: _Delta) -> None:
        _put_last(self.entities, other.entities.items())  # "last change last": a deterministic order
        _put_last(self.chunks, other.chunks.items())
        self.relations.update(other.relations)  # a set of edges: their order does not matter
        self.mentions += other.mentions


@dataclass(slots=True)
class _Upserts:
    """The upserts of consecutive delete-free entries, coalesced: per key the newest version wins
    (entities, relations; a tie goes to the later entry), else the later entry."""

    documents: dict[str, WalDocument] = field(default_factory=dict)
    entities: dict[str, tuple[int, WalEntity]] = field(default_factory=dict)
    chunks: dict[str, WalChunk] = field(default_factory=dict)
    relations: dict[tuple[str, str, str], tuple[int, WalRelation]] = field(default_factory=dict)
    mentions: dict[tuple[str, str], None] = field(default_factory=dict)
    # A stub chunk takes the document id of the first mention that creates it.
    mention_docs: dict[str, str] = field(default_factory=dict)
    kv: dict[str, str | None] = field(default_factory=dict)

    def add(self, e: WalEntry, version: int) -> None:
        _put_last(self.documents, ((d.id, d) for d in e.documents))
        _put_newest(self.entities, version, ((x.id, x) for x in e.entities))
        _put_last(self.chunks, ((c.id, c) for c in e.chunks))
        _put_newest(self.relations, version, (((r.source, r.type, r.target), r) for r in e.relations))
        for m in e.mentions:
            self.mentions[(m.chunk_id, m.entity_id)] = None
            self.mention_docs.setdefault(m.chunk_id, m.document_id)
        _put_last(self.kv, ((k.key, k.value) for k in e.kv))


def _put_last(d: dict[_K, _V], items: Iterable[tuple[_K, _V]]) -> None:
    for k, v in items:
        d.pop(k, None)
        d[k] = v


def _put_newest(d: dict[_K, tuple[int, _V]], version: int, items: Iterable[tuple[_K, _V]]) -> None:
    for k, v in items:
        old = d.get(k)
        if old is None or old[0] <= version:
            d.pop(k, None)  # keep "last change last" so the order stays deterministic
            d[k] = (version, v)


def _version(seq: int, entry: WalEntry) -> int:
    """An entry's version; one written before versions existed is ordered by its log position (it
    then orders writes on one shard only, as before)."""
    return entry.version or seq


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
    return isinstance(item, WalEntry) and bool(item.delete_entities or item.delete_documents
                                               or item.delete_relations)


def _checkpoint_before_deletes(conn: kuzu.Connection, entry: WalEntry, result: ApplyResult) -> bool:
    # kuzu 0.11.3 crashes (SIGSEGV on a later read) when a checkpoint follows the deletion of edges
    # inserted since the previous checkpoint (stale CSR index entries; fixed in the fork ladybug,
    # PR #612). So a delete that may reach such an edge first checkpoints, making it an on-disk one.
    # Only when needed: each checkpoint rewrites the whole adjacency data of the touched node groups.
    mem = _memory(conn)
    recent = mem.new_edge_ends
    try:
        if recent is not None:
            reached = set(entry.delete_entities)
            reached.update(i for k in entry.delete_relations for i in (k.source, k.target))
            if entry.delete_documents:
                reached.update(_chunks_of(conn, id_rows(entry.delete_documents)))
            if recent.isdisjoint(reached):
                return True
        conn.execute("CHECKPOINT")
    except Exception as exc:  # noqa: BLE001 - raising would lose the committed groups' index changes
        result.error = f"checkpoint before delete: {type(exc).__name__}: {exc}"[:MAX_ERROR_LEN]
        return False
    mem.new_edge_ends = set()
    return True


def _apply_group(
    conn: kuzu.Connection, group: list[_Item], result: ApplyResult, delta: _Delta, fps: dict[int, int]
) -> bool:
    """Apply a group in one transaction, or entry by entry if that fails; False if stopped early."""
    one = _Delta()
    purged: list[int] = []
    try:
        _in_tx(conn, lambda: purged.append(_apply_items(conn, group, one, fps)))
    except Exception as exc:  # noqa: BLE001 - rolled back; retried entry by entry if an entry's fault
        if not is_entry_fault(exc):
            # Not the entries' fault, and kuzu 0.11.3 may crash (SIGSEGV) when a database whose
            # buffer pool ran out is used again: stop here, the replica reopens it and retries.
            result.error = _error_text(group[0][0], exc)
            return False
        return _apply_one_by_one(conn, group, result, delta, fps)
    _memory(conn).purged = purged[-1]  # committed
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
        purged: list[int] = []
        try:
            _in_tx(conn, lambda: purged.append(_apply_items(conn, [(seq, item)], one, fps)))  # noqa: B023 - run at once
        except Exception as exc:  # noqa: BLE001 - recorded if the entry's fault, else retried later
            if not _record_poison(conn, seq, exc, result, fps[seq]):
                return False
        else:
            _memory(conn).purged = purged[-1]  # committed
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
    ents = [e for e in delta.entities.values() if e is not None]
    r.entity_ids, r.entity_vectors, r.entity_texts, r.entities_removed = _split(
        {k: None if e is None else (e.embedding, entity_text(e.name, e.description)) for k, e in delta.entities.items()},
        dim)
    r.entity_rows = [entity_row(e.name, e.type, e.description, e.properties) for e in ents]
    r.chunk_ids, r.chunk_vectors, r.chunk_texts, r.chunks_removed = _split(
        {k: None if c is None else (c.embedding, c.text) for k, c in delta.chunks.items()}, dim)
    r.chunk_rows = [(c.document_id, c.text, c.position) for c in delta.chunks.values() if c is not None]
    r.mentions = delta.mentions
    # Built here, on the shard thread: the event loop only links them into the view.
    r.relations = [relation_item(x.source, x.type, x.target, x.weight + 0.0, x.properties, x.chunks)
                   for x in delta.relations.values() if x is not None]
    r.relations_removed = [k for k, x in delta.relations.items() if x is None]
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


def _apply_items(conn: kuzu.Connection, items: list[_Item], delta: _Delta, fps: dict[int, int]) -> int:
    """Apply in the open transaction; returns the period whose tombstones are purged now."""
    seg = _Upserts()
    known = _memory(conn).purged
    purged = read_tombstones_purged(conn) if known is None else known
    for seq, item in items:
        if isinstance(item, _Poison):
            _record_failure(conn, seq, str(item), None)
            continue  # a poison entry changes nothing, so coalescing may continue across it
        version = _version(seq, item)
        period = version_wall_ms(version) // PURGE_EVERY_MS
        if period > purged:  # at this entry on every replica, however the log is batched
            _apply_upserts(conn, seg, delta)
            seg = _Upserts()
            _purge_tombstones(conn, period)
            purged = period
        if _has_deletes(item):
            _apply_upserts(conn, seg, delta)
            seg = _Upserts()
            _delete_relations(conn, item.delete_relations, version, delta)
            _delete_entities(conn, item.delete_entities, version, delta)
            _delete_documents(conn, item.delete_documents, delta)
        seg.add(item, version)
    _apply_upserts(conn, seg, delta)
    last = items[-1][0]
    _set_applied_seq(conn, last, fps[last])
    return purged


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


def _delete_relations(conn: kuzu.Connection, keys: list[WalRelationKey], version: int, delta: _Delta) -> None:
    if not keys:
        return
    named = {relation_version_key(k.source, k.type, k.target): (k.source, k.type, k.target) for k in keys}
    _raise_tombstones(conn, list(named), version)
    _drop_relations(conn, named, version, delta, stored=False)


def _drop_relations(
    conn: kuzu.Connection, named: dict[str, tuple[str, str, str]], version: int, delta: _Delta, *, stored: bool
) -> None:
    """Delete the relations among `named` (version key -> (source, type, target)) older than
    `version`, with their Version rows; `stored`: all of them are known to be stored."""
    live = _stored(conn, VERSION, list(named))
    # A stored relation has a Version row; without one, a key only names what is not there.
    gone = [k for k in named if (stored or k in live) and live.get(k, 0) < version]
    if not gone:
        return
    rels = [named[k] for k in gone]
    rows = pa.table({"u_from": [r[0] for r in rels], "u_type": [r[1] for r in rels], "u_to": [r[2] for r in rels]},
                    schema=_EDGE_KEY_SCHEMA)
    run(conn, f"{_edge_match(RELATES)} WHERE r.type = u_type DELETE r", rows,
        table_size(conn, ENTITY.name, RELATES.name))
    _drop_versions(conn, gone)
    for r in rels:
        delta.relations[r] = None
    _drop_orphan_stubs(conn, ENTITY, list(dict.fromkeys(i for r in rels for i in (r[0], r[2]))))


def _delete_entities(conn: kuzu.Connection, ids: list[str], version: int, delta: _Delta) -> None:
    """Delete entities as of `version`: each one's relations older than it (on every shard: the
    delete counts as a delete of each), its mentions, and the entity itself unless a newer write
    stored it. One still linked by a newer relation stays as a stub."""
    if not ids:
        return
    _raise_tombstones(conn, [entity_version_key(i) for i in ids], version)
    keys = table_size(conn, ENTITY.name)
    found = run(conn, "MATCH (e:Entity {id: u_id}) RETURN e.id", id_rows(ids), keys)[0]
    if not found:
        return
    t = id_rows(found)
    out = run(conn, "MATCH (e:Entity {id: u_id})-[r:RELATES]->(n:Entity) RETURN e.id, r.type, n.id", t, keys)
    inc = run(conn, "MATCH (e:Entity {id: u_id})<-[r:RELATES]-(n:Entity) RETURN n.id, r.type, e.id", t, keys)
    edges = dict.fromkeys([*zip(*out), *zip(*inc)])
    _drop_relations(conn, {relation_version_key(a, ty, b): (a, ty, b) for a, ty, b in edges}, version, delta,
                    stored=True)
    # Mentions carry no version: an entity's delete removes them, as it always did.
    near_chunks = run(conn, "MATCH (c:Chunk)-[:MENTIONS]->(e:Entity {id: u_id})"
                            " WHERE c.stub RETURN DISTINCT c.id", t, keys)[0]
    run(conn, "MATCH (c:Chunk)-[m:MENTIONS]->(e:Entity {id: u_id}) DELETE m", t, keys)
    delta.mentions += map(entity_cleared, found)
    named = {entity_version_key(i): i for i in found}
    live = _stored(conn, VERSION, list(named))
    # Stubs have no Version row; a stored entity newer than the delete stays as it is.
    older = [k for k in named if live.get(k, 0) < version]
    _drop_versions(conn, [k for k in older if k in live])
    dead = [named[k] for k in older]
    for i in dead:
        delta.entities.pop(i, None)
        delta.entities[i] = None
    if not dead:
        return
    linked = set(run(conn, "MATCH (n:Entity {id: u_id}) WHERE EXISTS { MATCH (n)-[:RELATES]-() } RETURN n.id",
                     id_rows(dead), keys)[0])
    _make_stubs(conn, ENTITY, [named[k] for k in older if k in live and named[k] in linked])
    unlinked = [i for i in dead if i not in linked]
    if unlinked:
        _delete_nodes(conn, ENTITY, id_rows(unlinked))
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
        delta.mentions += map(chunk_dropped, chunks)  # real chunks and stubs: with all their mentions
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
# Versions and tombstones (last-writer-wins)


_EDGE_KEY_SCHEMA = pa.schema([("u_from", pa.string()), ("u_type", pa.string()), ("u_to", pa.string())])


def _stored(conn: kuzu.Connection, table: NodeTable, keys: list[str]) -> dict[str, int]:
    """The version stored in `table` (VERSION or TOMBSTONE) for each of these keys that has one."""
    if not keys:
        return {}
    maybe = [k for k, m in zip(keys, known_keys(conn)[table.name].maybe(keys)) if m]
    if not maybe:
        return {}
    found = run(conn, f"MATCH (v:{table.name} {{key: u_id}}) RETURN v.key, v.version", id_rows(maybe),
                table_size(conn, table.name))
    return dict(zip(found[0], found[1]))


def _write_versions(conn: kuzu.Connection, table: NodeTable, versions: dict[str, int], existing: Iterable[str]) -> None:
    """Store `versions` (key -> version) in `table`: overwrite the keys among `existing`, insert the others."""
    if not versions:
        return
    have = set(existing)
    old = [k for k in versions if k in have]
    if old:
        rows = pa.table({"u_key": pa.array(old, pa.string()), "u_version": pa.array([versions[k] for k in old], pa.int64())})
        run(conn, f"MATCH (v:{table.name} {{key: u_key}}) SET v.version = u_version", rows, table_size(conn, table.name))
    new = [k for k in versions if k not in have]
    if new:
        _insert_nodes(conn, table, pa.table({"key": new, "version": [versions[k] for k in new]},
                                            schema=_SCHEMAS[table.name]))


def _drop_versions(conn: kuzu.Connection, keys: list[str]) -> None:
    if keys:
        run(conn, f"MATCH (v:{VERSION.name} {{key: u_id}}) DELETE v", id_rows(keys), table_size(conn, VERSION.name))


def _raise_tombstones(conn: kuzu.Connection, keys: list[str], version: int) -> None:
    """Record a delete at `version` of these keys (a tombstone keeps the newest delete)."""
    stored = _stored(conn, TOMBSTONE, keys)
    _write_versions(conn, TOMBSTONE, {k: version for k in keys if stored.get(k, 0) < version}, stored)


def _purge_tombstones(conn: kuzu.Connection, period: int) -> None:
    """Forget deletes older than the retention, as of the start of this period (entry versions)."""
    cut = version_of((period * PURGE_EVERY_MS - TOMBSTONE_RETENTION_MS) * 1000)
    conn.execute(f"MATCH (t:{TOMBSTONE.name}) WHERE t.version < $cut DELETE t", {"cut": cut})
    conn.execute("MERGE (m:Meta {key: $k}) SET m.value = $v", {"k": TOMBSTONES_PURGED_KEY, "v": period})


def _claim(conn: kuzu.Connection, versions: dict[str, int]) -> set[str]:
    """Store each key's version (key -> version) unless the stored one is newer; the keys that won."""
    if not versions:
        return set()
    keys = list(versions)
    maybe = [k for k, m in zip(keys, known_keys(conn)[VERSION.name].maybe(keys)) if m]
    present: set[str] = set()
    won: set[str] = set()
    if maybe:
        # One statement compares and sets (the newer stays), and says which got the given version.
        rows = pa.table({"u_key": pa.array(maybe, pa.string()),
                         "u_version": pa.array([versions[k] for k in maybe], pa.int64())})
        found = run(conn, f"MATCH (v:{VERSION.name} {{key: u_key}}) SET v.version = CASE WHEN v.version > u_version"
                          " THEN v.version ELSE u_version END RETURN v.key, v.version = u_version",
                    rows, table_size(conn, VERSION.name))
        present = set(found[0])
        won = {k for k, ok in zip(found[0], found[1]) if ok}
    new = [k for k in keys if k not in present]
    if new:
        _insert_nodes(conn, VERSION, pa.table({"key": new, "version": [versions[k] for k in new]},
                                              schema=_SCHEMAS[VERSION.name]))
        won.update(new)
    return won


def _newest(
    conn: kuzu.Connection, seg: _Upserts
) -> tuple[list[WalEntity], dict[tuple[str, str, str], WalRelation]]:
    """The entity and relation upserts of a segment that win: not older than the stored write of the
    key, nor than its newest delete (for a relation, nor than either end's: an entity's delete
    deletes its relations). Their versions are stored; one lookup and one write for both kinds."""
    ekeys = [entity_version_key(i) for i in seg.entities]
    rkeys = [relation_version_key(s, ty, t) for s, ty, t in seg.relations]
    ends = dict.fromkeys(entity_version_key(i) for s, _, t in seg.relations for i in (s, t))
    dead = _stored(conn, TOMBSTONE, list(dict.fromkeys([*ekeys, *rkeys, *ends])))
    todo = {k: v for k, (v, _) in zip(ekeys, seg.entities.values()) if v >= dead.get(k, 0)}
    for k, ((s, _, t), (v, _)) in zip(rkeys, seg.relations.items()):
        if not dead or v >= max(dead.get(k, 0), dead.get(entity_version_key(s), 0), dead.get(entity_version_key(t), 0)):
            todo[k] = v
    won = _claim(conn, todo)
    return ([e for k, (_, e) in zip(ekeys, seg.entities.values()) if k in won],
            {rk: r for k, (rk, (_, r)) in zip(rkeys, seg.relations.items()) if k in won})


# ---------------------------------------------------------------------------------------------------
# Upserts


def _apply_upserts(conn: kuzu.Connection, seg: _Upserts, delta: _Delta) -> None:
    if seg.documents:
        _upsert_nodes(conn, DOCUMENT, _node_rows(DOCUMENT, list(seg.documents.values())))
    ents, relations = _newest(conn, seg) if seg.entities or seg.relations else ([], {})
    if ents:
        _upsert_nodes(conn, ENTITY, _node_rows(ENTITY, ents))
        for e in ents:
            delta.entities.pop(e.id, None)
            delta.entities[e.id] = e
    if seg.chunks:
        chunks = list(seg.chunks.values())
        _upsert_nodes(conn, CHUNK, _node_rows(CHUNK, chunks))
        for c in chunks:
            delta.chunks.pop(c.id, None)
            delta.chunks[c.id] = c
    if relations or seg.mentions:
        ends = dict.fromkeys(i for s, _, t in relations for i in (s, t))
        ends.update(dict.fromkeys(e for _, e in seg.mentions))
        stored = {e.id for e in ents}
        _ensure_stubs(conn, ENTITY, [i for i in ends if i not in stored])
    if relations:
        _upsert_edges(conn, RELATES, list(relations), _relation_rows(list(relations.values())))
        delta.relations.update(relations)
    if seg.mentions:
        absent = {c: d for c, d in seg.mention_docs.items() if c not in seg.chunks}
        _ensure_stubs(conn, CHUNK, list(absent), absent)
        pairs = list(seg.mentions)
        _upsert_edges(conn, MENTIONS, pairs, _pair_rows(pairs))
        # A chunk absent here becomes a stub with the document of its first mention (`_ensure_stubs`).
        delta.mentions += (mentioned(c, e, seg.mention_docs[c]) for c, e in pairs)
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
    if missing:
        _insert_nodes(conn, table, _stub_rows(table, missing, owners))


def _stub_rows(table: NodeTable, ids: list[str], owners: dict[str, str] | None) -> pa.Table:
    # Empty values, not NULL: in kuzu 0.11.3 NULLs in a column that also has deleted rows get other
    # rows' values after an update and a checkpoint (found by fuzzing; without NULLs it holds).
    n = len(ids)
    cols: dict[str, Any] = {}
    for c in table.columns:
        if c.name == table.key:
            cols[c.name] = ids
        elif c.name == STUB:
            cols[c.name] = pa.repeat(True, n)
        elif c.name == table.owner:
            if owners is None:
                raise ValueError(f"stubs of {table.name} need their {c.name}")
            cols[c.name] = [owners[i] for i in ids]
        else:
            cols[c.name] = [c.empty] * n
    return pa.table(cols, schema=_SCHEMAS[table.name])


def _make_stubs(conn: kuzu.Connection, table: NodeTable, ids: list[str]) -> None:
    """Turn these (existing, real) rows into stubs: content emptied, key kept. Entities only: a
    chunk's stub keeps its document_id."""
    if ids:
        rows = _stub_rows(table, ids, None)
        sets = ", ".join(f"n.{c} = u_{c}" for c in rows.column_names if c != table.key)
        run(conn, f"MATCH (n:{table.name} {{{table.key}: u_{table.key}}}) SET {sets}", _prefixed(rows),
            table_size(conn, table.name))


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

