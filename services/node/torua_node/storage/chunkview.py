"""A shard replica's chunks in memory: the rows of its real chunks and which chunks mention which
entities, answering what Kuzu answers for a chunk read by id and for the chunks mentioning entities
(retrieval's last two reads), identically (order, limit).

Kept in step with apply like the graph view (`graphview.py`): each batch's changes
(`shard.apply.ApplyResult.update_chunks`), applied on the event loop before the batch's applied_seq
becomes visible. The rows are net changes (the chunk as stored, or removed); the mentions are what
apply did to them, in order, since the order matters (a document deleted and its chunk mentioned
again, an entity deleted and mentioned again, in one batch):

- `mentioned(chunk, entity, document)`: a mention stored. A chunk this shard does not hold becomes a
  stub standing for it, with the document of its first mention (`shard.apply._ensure_stubs`).
- `chunk_dropped(chunk)`: a chunk (real or stub) deleted with its document, and its mentions.
- `entity_cleared(entity)`: an entity deleted, and every mention of it; a stub chunk left without
  mentions goes too (`shard.apply._drop_orphan_stubs`).

A mention's document is its chunk's: the real chunk's row, else the stub's. Mentions are a set, as
apply means them (Kuzu may hold one twice: apply's check for an existing edge reads inside its
transaction, where kuzu 0.11.3 can miss one). Built at open by two scans of the database
(`load_chunk_view`).
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Iterable

import kuzu

from torua_node.storage.chunks import ChunkOut, Mention
from torua_node.storage.store import all_columns

__all__ = ["ChunkView", "ChunkRow", "MentionChange", "mentioned", "chunk_dropped", "entity_cleared",
           "load_chunk_view"]

# document id, text, position
ChunkRow = tuple[str, str, int]
# (kind, chunk, entity, document): see the module docstring
MentionChange = tuple[str, str, str, str]
_MENTIONED, _CHUNK_DROPPED, _ENTITY_CLEARED = "m", "c", "e"

_intern = sys.intern


def mentioned(chunk: str, entity: str, document: str) -> MentionChange:
    return (_MENTIONED, chunk, entity, document)


def chunk_dropped(chunk: str) -> MentionChange:
    return (_CHUNK_DROPPED, chunk, "", "")


def entity_cleared(entity: str) -> MentionChange:
    return (_ENTITY_CLEARED, "", entity, "")


class ChunkView:
    __slots__ = ("_by_chunk", "_by_entity", "_rows", "_stubs")

    def __init__(self) -> None:
        self._rows: dict[str, ChunkRow] = {}  # real chunks
        self._stubs: dict[str, str] = {}  # stub chunks (standing for another shard's) -> document id
        self._by_chunk: dict[str, dict[str, None]] = {}  # chunk -> the entities it mentions
        self._by_entity: dict[str, dict[str, None]] = {}  # entity -> the chunks mentioning it

    # --- changes ---------------------------------------------------------------------------------

    def apply(
        self, rows: Iterable[tuple[str, ChunkRow]], rows_removed: Iterable[str], mentions: Iterable[MentionChange]
    ) -> None:
        """Apply a batch: real chunks stored or removed (disjoint keys, as they are after it), then
        what happened to mentions, in order."""
        for i in rows_removed:
            self._rows.pop(i, None)
        for i, row in rows:
            i = _intern(i)
            self._rows[i] = row
            self._stubs.pop(i, None)
        for kind, chunk, entity, document in mentions:
            if kind == _MENTIONED:
                self._mention(chunk, entity, document)
            elif kind == _CHUNK_DROPPED:
                for e in list(self._by_chunk.get(chunk, ())):
                    self._unmention(chunk, e)
                self._stubs.pop(chunk, None)
            else:
                for c in list(self._by_entity.get(entity, ())):
                    self._unmention(c, entity)

    def _mention(self, chunk: str, entity: str, document: str) -> None:
        chunk, entity = _intern(chunk), _intern(entity)
        if chunk not in self._rows and chunk not in self._stubs:
            self._stubs[chunk] = document
        es = self._by_chunk.get(chunk)
        if es is None:
            es = self._by_chunk[chunk] = {}
        es[entity] = None
        cs = self._by_entity.get(entity)
        if cs is None:
            cs = self._by_entity[entity] = {}
        cs[chunk] = None

    def _unmention(self, chunk: str, entity: str) -> None:
        es = self._by_chunk[chunk]
        del es[entity]
        if not es:
            del self._by_chunk[chunk]  # no empty dicts left behind
            self._stubs.pop(chunk, None)  # a stub mentioning nothing is dropped
        cs = self._by_entity[entity]
        del cs[chunk]
        if not cs:
            del self._by_entity[entity]

    # --- reads -------------------------------------------------------------------------------------

    def chunks_by_ids(self, ids: list[str]) -> list[ChunkOut]:
        """The real chunks among `ids` (stubs and absent ids skipped), with the entities each
        mentions, ordered by id."""
        rows, by_chunk = self._rows, self._by_chunk
        out = []
        for i in sorted(set(ids)):
            row = rows.get(i)
            if row is not None:
                out.append(ChunkOut(id=i, document_id=row[0], text=row[1], position=row[2],
                                    entities=sorted(by_chunk.get(i, ()))))
        return out

    def mentions_of(self, entity_ids: list[str], limit: int) -> list[Mention]:
        """The chunks mentioning any of `entity_ids`, ordered by (entity, chunk), at most `limit`."""
        if limit <= 0:
            return []
        by = self._by_entity
        pairs = ((e, c) for e in set(entity_ids) for c in by.get(e, ()))
        return [Mention(chunk_id=c, document_id=self._document(c), entity_id=e) for e, c in heapq.nsmallest(limit, pairs)]

    def _document(self, chunk: str) -> str:
        row = self._rows.get(chunk)
        return row[0] if row is not None else self._stubs[chunk]

    # --- inspection ------------------------------------------------------------------------------

    def contents(self) -> tuple[dict[str, ChunkRow], dict[str, tuple[str, frozenset[str]]]]:
        """Everything held: the real chunks' rows, and per chunk mentioning anything its document and
        the entities (for tests and checks); ValueError if the indexes disagree."""
        pairs = {(e, c) for e, cs in self._by_entity.items() for c in cs}
        held = {(e, c) for c, es in self._by_chunk.items() for e in es}
        if pairs != held:
            raise ValueError(f"mention index out of step: {len(pairs)} by entity, {len(held)} by chunk")
        if not self._stubs.keys() <= self._by_chunk.keys() or not self._stubs.keys().isdisjoint(self._rows):
            raise ValueError("a stub chunk that mentions nothing, or is a real chunk too")
        return dict(self._rows), {c: (self._document(c), frozenset(es)) for c, es in self._by_chunk.items()}


def load_chunk_view(conn: kuzu.Connection) -> ChunkView:
    """The view of what the database holds: one scan of the real chunks, one of the mentions."""
    view = ChunkView()
    cols = all_columns(conn, "MATCH (c:Chunk) WHERE NOT c.stub RETURN c.id, c.document_id, c.text, c.position")
    rows = [(i, (d or "", text or "", p or 0)) for i, d, text, p in zip(*cols)]
    del cols
    cols = all_columns(conn, "MATCH (c:Chunk)-[:MENTIONS]->(e:Entity) RETURN c.id, e.id, c.document_id")
    mentions = [mentioned(c, e, d or "") for c, e, d in zip(*cols)]
    del cols
    view.apply(rows, (), mentions)
    return view
