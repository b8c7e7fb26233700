"""Requests a router sends to one shard (`torua.shard.<n>.<op>`), answered by any caught-up replica.

Internal subjects, but plain JSON like the public ones so `nats req` can debug them. Every request
may carry `after`, the shard's write token: a replica that has not applied that far waits briefly,
then answers 503 — never stale data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta

from torua import subjects
from torua.endpoints import Endpoint, ServiceHandle, add_endpoints
from torua.errors import BadRequest, NotFound
from torua.model import EdgeOut, EntityOut
from torua.version import __version__
from torua.wire import Reply, Request
from torua_node.cypher.execute import ShardRows, execute_on_shard
from torua_node.storage import reads
from torua_node.storage.chunks import ChunkOut, Mention, chunks_by_ids, mentions_of

if TYPE_CHECKING:
    from torua_node.shard.replica import ShardReplica

__all__ = [
    "ShardGet",
    "ShardEntities",
    "ShardEdges",
    "ShardKVGet",
    "ShardQuery",
    "QueryRowsReply",
    "EntitiesReply",
    "EdgesReply",
    "start_shard_service",
]


class ShardRequest(Request):
    after: Annotated[int, Meta(ge=0)] = 0


class ShardGet(ShardRequest, kw_only=True):
    id: str


class ShardEntities(ShardRequest, kw_only=True):
    ids: list[str]


class ShardEdges(ShardRequest, kw_only=True):
    ids: list[str]
    direction: Literal["out", "in", "both"] = "both"
    types: list[str] | None = None
    limit: int = 1000


class ShardKVGet(ShardRequest, kw_only=True):
    key: str


Target = Literal["chunks", "entities"]


class ShardVector(ShardRequest, kw_only=True):
    vector: list[float]
    k: int
    target: Target = "chunks"


class ShardTextStats(ShardRequest, kw_only=True):
    terms: list[str]
    target: Target = "chunks"


class ShardText(ShardRequest, kw_only=True):
    idf: dict[str, float]
    avg_length: float
    k: int
    target: Target = "chunks"


class ShardMentions(ShardRequest, kw_only=True):
    entity_ids: list[str]
    limit: int = 10_000


class ShardChunks(ShardRequest, kw_only=True):
    ids: list[str]


class ShardQuery(ShardRequest, kw_only=True):
    query: str
    params: dict[str, Any] = msgspec.field(default_factory=dict)


class HitsReply(Reply):
    hits: list[tuple[str, float]]
    applied_seq: int


class TextStatsReply(Reply):
    df: dict[str, int]
    n_docs: int
    total_length: int
    applied_seq: int


class MentionsReply(Reply):
    mentions: list[Mention]
    applied_seq: int


class ChunksReply(Reply):
    chunks: list[ChunkOut]
    applied_seq: int


class QueryRowsReply(Reply):
    result: ShardRows
    applied_seq: int


class EntityReply(Reply):
    entity: EntityOut
    applied_seq: int


class EntitiesReply(Reply):
    entities: list[EntityOut]
    applied_seq: int


class EdgesReply(Reply):
    edges: list[EdgeOut]
    applied_seq: int


class KVValueReply(Reply):
    key: str
    value: str
    applied_seq: int


class ShardApi:
    def __init__(self, replica: ShardReplica) -> None:
        self.replica = replica

    async def _ready(self, after: int) -> int:
        """Wait until the replica has applied `after`; the applied sequence the answer is at least as
        of (taken before reading: an apply finishing meanwhile only makes the data newer)."""
        await self.replica.wait_applied(after)
        return self.replica.applied_seq

    async def get(self, req: ShardGet) -> EntityReply:
        r = self.replica
        seq = await self._ready(req.after)
        entity = await r.store.call(reads.get_entity, req.id)
        if entity is None:
            raise NotFound(f"entity {req.id!r} not found")
        return EntityReply(entity=entity, applied_seq=seq)

    async def entities(self, req: ShardEntities) -> EntitiesReply:
        r = self.replica
        seq = await self._ready(req.after)
        return EntitiesReply(entities=await r.store.call(reads.entities_by_ids, req.ids), applied_seq=seq)

    async def edges(self, req: ShardEdges) -> EdgesReply:
        r = self.replica
        seq = await self._ready(req.after)
        found = await r.store.call(reads.edges, req.ids, req.direction, req.types, req.limit)
        return EdgesReply(edges=found, applied_seq=seq)

    async def kv_get(self, req: ShardKVGet) -> KVValueReply:
        r = self.replica
        seq = await self._ready(req.after)
        value = await r.store.call(reads.kv_get, req.key)
        if value is None:
            raise NotFound(f"key {req.key!r} not found")
        return KVValueReply(key=req.key, value=value, applied_seq=seq)


    async def vector(self, req: ShardVector) -> HitsReply:
        r = self.replica
        seq = await self._ready(req.after)
        if len(req.vector) != r.dim:
            raise BadRequest(f"vector has {len(req.vector)} values; this cluster's embedding_dim is {r.dim}")
        index = r.chunk_index if req.target == "chunks" else r.entity_index
        hits = index.search(np.asarray(req.vector, np.float32), req.k)
        return HitsReply(hits=hits, applied_seq=seq)

    async def text_stats(self, req: ShardTextStats) -> TextStatsReply:
        r = self.replica
        seq = await self._ready(req.after)
        index = r.chunk_text if req.target == "chunks" else r.entity_text
        df, n_docs, total = index.stats(req.terms)
        return TextStatsReply(df=df, n_docs=n_docs, total_length=total, applied_seq=seq)

    async def text(self, req: ShardText) -> HitsReply:
        r = self.replica
        seq = await self._ready(req.after)
        index = r.chunk_text if req.target == "chunks" else r.entity_text
        return HitsReply(hits=index.search(req.idf, req.avg_length, req.k), applied_seq=seq)

    async def mentions(self, req: ShardMentions) -> MentionsReply:
        r = self.replica
        seq = await self._ready(req.after)
        found = await r.store.call(mentions_of, req.entity_ids, req.limit)
        return MentionsReply(mentions=found, applied_seq=seq)

    async def chunks(self, req: ShardChunks) -> ChunksReply:
        r = self.replica
        seq = await self._ready(req.after)
        return ChunksReply(chunks=await r.store.call(chunks_by_ids, req.ids), applied_seq=seq)


    async def query(self, req: ShardQuery) -> QueryRowsReply:
        r = self.replica
        seq = await self._ready(req.after)
        rows = await r.store.call(execute_on_shard, req.query, req.params)
        return QueryRowsReply(result=rows, applied_seq=seq)


async def start_shard_service(replica: ShardReplica) -> ServiceHandle:
    api = ShardApi(replica)
    n, q = replica.shard, subjects.shard_queue(replica.shard)
    eps = [
        Endpoint("get", subjects.shard_endpoint(n, "get"), api.get, ShardGet, "One entity by id", q, True),
        Endpoint("entities", subjects.shard_endpoint(n, "entities"), api.entities, ShardEntities, "Entities by ids", q, True),
        Endpoint("edges", subjects.shard_endpoint(n, "edges"), api.edges, ShardEdges, "1-hop edges of ids", q, True),
        Endpoint("kv_get", subjects.shard_endpoint(n, "kv_get"), api.kv_get, ShardKVGet, "One key's value", q, True),
        Endpoint("vector", subjects.shard_endpoint(n, "vector"), api.vector, ShardVector, "Exact top-k by cosine", q, True),
        Endpoint("text_stats", subjects.shard_endpoint(n, "text_stats"), api.text_stats, ShardTextStats, "BM25 corpus statistics", q, True),
        Endpoint("text", subjects.shard_endpoint(n, "text"), api.text, ShardText, "BM25 top-k with global statistics", q, True),
        Endpoint("mentions", subjects.shard_endpoint(n, "mentions"), api.mentions, ShardMentions, "Chunks mentioning entities", q, True),
        Endpoint("chunks", subjects.shard_endpoint(n, "chunks"), api.chunks, ShardChunks, "Chunks by ids", q, True),
        Endpoint("query", subjects.shard_endpoint(n, "query"), api.query, ShardQuery, "A planned read-only query", q, True),
    ]
    return await add_endpoints(
        replica.nc,
        name=subjects.SHARD_SERVICE,
        version=__version__,
        description=f"Shard {n} replica on node {replica.node_id}",
        endpoints=eps,
        metadata={"shard": str(n), "node_id": replica.node_id},
    )

