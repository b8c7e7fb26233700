"""An in-memory ShardClient: a few shards' data placed as the write path places it, answered with
the real pure pieces of a replica (TextIndex for BM25, VectorIndex for cosine top-k).

Placement follows the router's split: an entity in the shard of its id; a relation at both ends'
shards; a chunk in its document's shard, with its mentions there and at each mentioned entity's
shard. Failures are injected per shard (and optionally per operation); every call is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from torua.embedding import HashEmbedder
from torua.errors import NotFound
from torua.model import Chunk, EdgeOut, Entity, EntityOut, Relation
from torua.wire import Reply
from torua_node.router.client import ShardClient
from torua_node.shard import protocol as p
from torua_node.shard.api import stems_used
from torua_node.shard.protocol import Op, ShardRequest, name_coverage
from torua_node.storage.chunks import ChunkOut, Mention
from torua_node.storage.textindex import TextIndex, entity_text
from torua_node.storage.vectors import VectorIndex

DIM = 32
Q = TypeVar("Q", bound=ShardRequest)
R = TypeVar("R", bound=Reply)


@dataclass
class FakeShard:
    dim: int
    entities: dict[str, EntityOut] = field(default_factory=dict)
    edges: dict[tuple[str, str, str], EdgeOut] = field(default_factory=dict)
    chunks: dict[str, ChunkOut] = field(default_factory=dict)
    mentions: set[tuple[str, str, str]] = field(default_factory=set)  # (chunk, document, entity)
    kv: dict[str, str] = field(default_factory=dict)
    applied_seq: int = 1
    chunk_text: TextIndex = field(default_factory=TextIndex)
    entity_text: TextIndex = field(default_factory=TextIndex)

    def __post_init__(self) -> None:
        self.chunk_vectors = VectorIndex(self.dim)
        self.entity_vectors = VectorIndex(self.dim)


class FakeShards(ShardClient):
    """`num_shards` shards in memory. `fail[shard]` (or `fail[(shard, op)]`) is raised by that
    shard's calls instead of answering."""

    def __init__(self, num_shards: int, dim: int = DIM) -> None:
        self.shards = [FakeShard(dim) for _ in range(num_shards)]
        self.embedder = HashEmbedder(dim)
        self.fail: dict[int | tuple[int, str], BaseException] = {}
        self.calls: list[tuple[int, str, ShardRequest]] = []

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    # --- loading, as the write path places data -----------------------------------------------

    def add(
        self,
        entities: Sequence[Entity] = (),
        relations: Sequence[Relation] = (),
        chunks: Sequence[Chunk] = (),
    ) -> None:
        for e in entities:
            shard = self.shards[self.owner(e.id)]
            shard.entities[e.id] = EntityOut(
                id=e.id, name=e.name, type=e.type, description=e.description, properties=e.properties
            )
            text = entity_text(e.name, e.description)
            shard.entity_text.upsert([(e.id, text)])
            shard.entity_vectors.upsert([e.id], self._vector(text, e.embedding))
        for r in relations:
            edge = EdgeOut(source=r.source, target=r.target, type=r.type, weight=r.weight, chunks=list(r.chunks))
            for s in {self.owner(r.source), self.owner(r.target)}:
                self.shards[s].edges[(r.source, r.type, r.target)] = edge
        for c in chunks:
            home = self.shards[self.owner(c.document_id)]
            home.chunks[c.id] = ChunkOut(
                id=c.id, document_id=c.document_id, text=c.text, position=c.position, entities=sorted(set(c.entities))
            )
            home.chunk_text.upsert([(c.id, c.text)])
            home.chunk_vectors.upsert([c.id], self._vector(c.text, c.embedding))
            for entity_id in c.entities:
                for s in {self.owner(c.document_id), self.owner(entity_id)}:
                    self.shards[s].mentions.add((c.id, c.document_id, entity_id))

    def _vector(self, text: str, given: list[float] | None) -> np.ndarray:
        if given is not None:
            return np.asarray([given], np.float32)
        return self.embedder.embed([text])

    def put_kv(self, key: str, value: str, shard: int) -> None:
        self.shards[shard].kv[key] = value

    # --- the protocol -------------------------------------------------------------------------

    async def call(self, shard: int, op: Op[Q, R], request: Q, timeout: float | None = None) -> R:
        self.calls.append((shard, op.name, request))
        failure = self.fail.get((shard, op.name)) or self.fail.get(shard)
        if failure is not None:
            raise failure
        reply = self._answer(self.shards[shard], op.name, request)
        assert isinstance(reply, op.reply), (op.name, type(reply))
        return reply

    def ops(self, name: str) -> list[tuple[int, ShardRequest]]:
        """The calls made for one operation, as (shard, request)."""
        return [(s, req) for s, n, req in self.calls if n == name]

    def _answer(self, sh: FakeShard, op: str, req: ShardRequest) -> Reply:
        seq = sh.applied_seq
        if isinstance(req, p.ShardGet):
            if req.id not in sh.entities:
                raise NotFound(f"entity {req.id!r} not found")
            return p.EntityReply(entity=sh.entities[req.id], applied_seq=seq)
        if isinstance(req, p.ShardKVGet):
            if req.key not in sh.kv:
                raise NotFound(f"key {req.key!r} not found")
            return p.KVValueReply(key=req.key, value=sh.kv[req.key], applied_seq=seq)
        if isinstance(req, p.ShardEntities):
            found = [sh.entities[i] for i in dict.fromkeys(req.ids) if i in sh.entities]
            return p.EntitiesReply(entities=found, applied_seq=seq)
        if isinstance(req, p.ShardEdges):
            ids = set(req.ids)
            hit = [
                e for k, e in sorted(sh.edges.items())
                if (not req.types or e.type in req.types)
                and ((req.direction in ("out", "both") and e.source in ids)
                     or (req.direction in ("in", "both") and e.target in ids))
            ]
            return p.EdgesReply(edges=hit[: req.limit], applied_seq=seq)
        if isinstance(req, p.ShardVector):
            index = sh.chunk_vectors if req.target == "chunks" else sh.entity_vectors
            hits = index.search(np.asarray(req.vector, np.float32), req.k)
            return p.HitsReply(hits=hits, applied_seq=seq)
        if isinstance(req, p.ShardTextStats):
            text = sh.chunk_text if req.target == "chunks" else sh.entity_text
            df, n_docs, total = text.stats(req.terms)
            return p.TextStatsReply(df=df, n_docs=n_docs, total_length=total, applied_seq=seq)
        if isinstance(req, p.ShardText):
            text = sh.chunk_text if req.target == "chunks" else sh.entity_text
            hits = text.search(req.idf, req.avg_length, req.k)
            if req.target != "entities" or not req.graph_edges or not hits:
                return p.TextReply(hits=hits, applied_seq=seq)
            top = hits[: req.graph_top] if req.graph_top else hits
            rows = self._answer(sh, op, p.ShardEntities(ids=[i for i, _ in top]))
            assert isinstance(rows, p.EntitiesReply)
            named = [e for e in rows.entities if (name_coverage(e.name, req.idf) or 0.0) >= req.graph_named]
            edges = self._answer(sh, op, p.ShardEdges(ids=[e.id for e in named], direction="both", limit=req.graph_edges))
            assert isinstance(edges, p.EdgesReply)
            return p.TextReply(hits=hits, applied_seq=seq, entities=named, edges=edges.edges)
        if isinstance(req, p.ShardMentions):
            wanted = set(req.entity_ids)
            rows = sorted((m for m in sh.mentions if m[2] in wanted), key=lambda m: (m[2], m[0]))[: req.limit]
            return p.MentionsReply(mentions=[Mention(c, d, e) for c, d, e in rows], applied_seq=seq)
        if isinstance(req, p.ShardChunkStems):
            return p.ChunkStemsReply(uses=stems_used(sh.chunk_text, req), applied_seq=seq)
        if isinstance(req, p.ShardChunks):
            found_chunks = sorted((sh.chunks[i] for i in set(req.ids) if i in sh.chunks), key=lambda c: c.id)
            return p.ChunksReply(chunks=found_chunks, applied_seq=seq)
        raise AssertionError(f"the fake does not answer {op}")

