"""A shard replica's side of the router–shard protocol (`torua_node.shard.protocol`): one endpoint
per operation on `torua.shard.<n>.<op>`, in the shard's queue group, answered by any caught-up
replica. Every answer waits until the replica has applied the request's write token (`after`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import numpy as np
from nats.aio.client import Client as NATS

from torua import subjects
from torua.endpoints import Endpoint, ServiceHandle, add_endpoints
from torua.errors import BadRequest, NotFound
from torua.version import __version__
from torua.wire import Reply
from torua_node.shard import protocol as p
from torua_node.shard.protocol import (
    ChunksReply,
    EdgesReply,
    EntitiesReply,
    EntityReply,
    HitsReply,
    KVValueReply,
    MentionsReply,
    QueryRowsReply,
    ShardChunks,
    ShardEdges,
    ShardEntities,
    ShardGet,
    ShardKVGet,
    ShardMentions,
    ShardQuery,
    ShardRequest,
    ShardText,
    ShardTextStats,
    ShardVector,
    TextStatsReply,
)
from torua_node.shard.query import execute_on_shard
from torua_node.storage import reads
from torua_node.storage.chunks import chunks_by_ids, mentions_of
from torua_node.storage.store import ShardStore
from torua_node.storage.textindex import TextIndex
from torua_node.storage.vectors import VectorIndex

__all__ = ["ServedReplica", "ShardApi", "start_shard_service"]

Q = TypeVar("Q", bound=ShardRequest)
R = TypeVar("R", bound=Reply)


class ServedReplica(Protocol):
    """What the shard API reads of a replica (`torua_node.shard.replica.ShardReplica`)."""

    shard: int
    node_id: str
    nc: NATS
    dim: int
    applied_seq: int
    store: ShardStore
    entity_index: VectorIndex
    chunk_index: VectorIndex
    entity_text: TextIndex
    chunk_text: TextIndex

    async def wait_applied(self, seq: int) -> None:
        """Return once `seq` is applied; Unavailable if that takes too long."""
        ...

    async def wait_strong(self, after: int) -> None:
        """Return once every write acknowledged before the call (and `after`) is applied."""
        ...


class ShardApi:
    def __init__(self, replica: ServedReplica) -> None:
        self.replica = replica

    async def _ready(self, req: ShardRequest) -> int:
        """Wait until the replica is as fresh as `req` asks: every write acknowledged before it
        (strong, the default) or its write token `after` (eventual). Returns the applied sequence
        the answer is at least as of (taken before reading: an apply finishing meanwhile only makes
        the data newer)."""
        if req.consistency == "strong":
            await self.replica.wait_strong(req.after)
        else:
            await self.replica.wait_applied(req.after)
        return self.replica.applied_seq

    async def get(self, req: ShardGet) -> EntityReply:
        r = self.replica
        seq = await self._ready(req)
        entity = await r.store.call(reads.get_entity, req.id)
        if entity is None:
            raise NotFound(f"entity {req.id!r} not found")
        return EntityReply(entity=entity, applied_seq=seq)

    async def entities(self, req: ShardEntities) -> EntitiesReply:
        r = self.replica
        seq = await self._ready(req)
        return EntitiesReply(entities=await r.store.call(reads.entities_by_ids, req.ids), applied_seq=seq)

    async def edges(self, req: ShardEdges) -> EdgesReply:
        r = self.replica
        seq = await self._ready(req)
        found = await r.store.call(reads.edges, req.ids, req.direction, req.types, req.limit)
        return EdgesReply(edges=found, applied_seq=seq)

    async def kv_get(self, req: ShardKVGet) -> KVValueReply:
        r = self.replica
        seq = await self._ready(req)
        value = await r.store.call(reads.kv_get, req.key)
        if value is None:
            raise NotFound(f"key {req.key!r} not found")
        return KVValueReply(key=req.key, value=value, applied_seq=seq)

    async def vector(self, req: ShardVector) -> HitsReply:
        r = self.replica
        seq = await self._ready(req)
        if len(req.vector) != r.dim:
            raise BadRequest(f"vector has {len(req.vector)} values; this cluster's embedding_dim is {r.dim}")
        index = r.chunk_index if req.target == "chunks" else r.entity_index
        hits = index.search(np.asarray(req.vector, np.float32), req.k)
        return HitsReply(hits=hits, applied_seq=seq)

    async def text_stats(self, req: ShardTextStats) -> TextStatsReply:
        r = self.replica
        seq = await self._ready(req)
        index = r.chunk_text if req.target == "chunks" else r.entity_text
        df, n_docs, total = index.stats(req.terms)
        return TextStatsReply(df=df, n_docs=n_docs, total_length=total, applied_seq=seq)

    async def text(self, req: ShardText) -> HitsReply:
        r = self.replica
        seq = await self._ready(req)
        index = r.chunk_text if req.target == "chunks" else r.entity_text
        return HitsReply(hits=index.search(req.idf, req.avg_length, req.k), applied_seq=seq)

    async def mentions(self, req: ShardMentions) -> MentionsReply:
        r = self.replica
        seq = await self._ready(req)
        found = await r.store.call(mentions_of, req.entity_ids, req.limit)
        return MentionsReply(mentions=found, applied_seq=seq)

    async def chunks(self, req: ShardChunks) -> ChunksReply:
        r = self.replica
        seq = await self._ready(req)
        return ChunksReply(chunks=await r.store.call(chunks_by_ids, req.ids), applied_seq=seq)

    async def query(self, req: ShardQuery) -> QueryRowsReply:
        r = self.replica
        seq = await self._ready(req)
        rows = await r.store.call(execute_on_shard, req.query, req.params)
        return QueryRowsReply(result=rows, applied_seq=seq)


def _endpoint(shard: int, op: p.Op[Q, R], handler: Callable[[Q], Awaitable[R]]) -> Endpoint:
    """The endpoint of one operation; the handler must take the op's request and give its reply."""
    subject = subjects.shard_endpoint(shard, op.name)
    return Endpoint(op.name, subject, handler, op.request, op.description, subjects.shard_queue(shard), True)


async def start_shard_service(replica: ServedReplica) -> ServiceHandle:
    api = ShardApi(replica)
    n = replica.shard
    eps = [
        _endpoint(n, p.GET, api.get),
        _endpoint(n, p.ENTITIES, api.entities),
        _endpoint(n, p.EDGES, api.edges),
        _endpoint(n, p.KV_GET, api.kv_get),
        _endpoint(n, p.VECTOR, api.vector),
        _endpoint(n, p.TEXT_STATS, api.text_stats),
        _endpoint(n, p.TEXT, api.text),
        _endpoint(n, p.MENTIONS, api.mentions),
        _endpoint(n, p.CHUNKS, api.chunks),
        _endpoint(n, p.QUERY, api.query),
    ]
    return await add_endpoints(
        replica.nc,
        name=subjects.SHARD_SERVICE,
        version=__version__,
        description=f"Shard {n} replica on node {replica.node_id}",
        endpoints=eps,
        metadata={"shard": str(n), "node_id": replica.node_id},
    )

