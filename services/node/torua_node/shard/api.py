"""A shard replica's side of the router–shard protocol (`torua_node.shard.protocol`): one endpoint
per operation on `torua.shard.<n>.<op>`, in the shard's queue group, answered by any caught-up
replica. Every answer waits until the replica has applied the request's write token (`after`).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import numpy as np
from nats.aio.client import Client as NATS

from torua import subjects
from torua.endpoints import Endpoint, RawReply, ServiceHandle, add_endpoints, encode
from torua.errors import BadRequest, NotFound, ResourceLimit, Unavailable
from torua.natsserver import MAX_PAYLOAD
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
    ShardPage,
    ShardQuery,
    ShardRequest,
    ShardText,
    ShardTextStats,
    ShardVector,
    TextStatsReply,
)
from torua_node.shard.worker import ShardQueries
from torua_node.storage import reads
from torua_node.storage.chunks import chunks_by_ids, mentions_of
from torua_node.storage.graphview import GraphView
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
    graph: GraphView
    queries: ShardQueries

    async def wait_applied(self, seq: int) -> None:
        """Return once `seq` is applied; Unavailable if that takes too long."""
        ...

    async def wait_strong(self, after: int) -> None:
        """Return once every write acknowledged before the call (and `after`) is applied."""
        ...

    async def check_log_id(self, log_id: int) -> None:
        """Unavailable if this replica applied another log than `log_id` (a router's read point)."""
        ...


# What a reply may take of NATS's max_payload (headers and framing need the rest): a larger one is
# sent in parts of this size (protocol.PAGED_HEADER), never dropped.
MAX_REPLY_BYTES = MAX_PAYLOAD - 64 * 1024
# Parts wait this long for the router to fetch them; at most this many replies' worth are kept, and a
# reply larger than MAX_PAGED_BYTES is refused (413).
PAGE_TTL_S = 30.0
MAX_PAGED = 16
MAX_PAGED_BYTES = 256 * 1024 * 1024


class PagedReplies:
    """The remaining parts of replies too large for one message, fetched part by part by the router
    (`page_subject`); bounded in number and kept PAGE_TTL_S at most."""

    def __init__(self) -> None:
        self._open: OrderedDict[str, tuple[float, list[bytes]]] = OrderedDict()

    def split(self, data: bytes, node: str, part_bytes: int = MAX_REPLY_BYTES) -> RawReply:
        """The first part of `data` as the reply, the others kept under a new cursor."""
        if len(data) > MAX_PAGED_BYTES:
            raise ResourceLimit(f"the reply is {len(data)} bytes; replies are limited to {MAX_PAGED_BYTES} bytes "
                                "even in parts: ask for less", limit=MAX_PAGED_BYTES)
        parts = [data[i:i + part_bytes] for i in range(0, len(data), part_bytes)]
        self._expire()
        while len(self._open) >= MAX_PAGED:
            self._open.popitem(last=False)  # the oldest: its router gets a 503 for the rest
        cursor = uuid.uuid4().hex
        self._open[cursor] = (time.monotonic() + PAGE_TTL_S, parts)
        return RawReply(parts[0], {p.PAGED_HEADER: f"{cursor} {node} {len(parts)}"})

    def take(self, cursor: str, part: int) -> bytes:
        self._expire()
        entry = self._open.get(cursor)
        if entry is None or part >= len(entry[1]):
            raise Unavailable(f"reply parts {cursor} expired or unknown (kept {PAGE_TTL_S:g}s); ask again")
        parts = entry[1]
        if part == len(parts) - 1:
            del self._open[cursor]
        return parts[part]

    def _expire(self) -> None:
        now = time.monotonic()
        for cursor in [c for c, (until, _) in self._open.items() if until < now]:
            del self._open[cursor]


class ShardApi:
    def __init__(self, replica: ServedReplica) -> None:
        self.replica = replica
        self.paged = PagedReplies()

    async def _ready(self, req: ShardRequest) -> int:
        """Wait until the replica is as fresh as `req` asks: every write acknowledged before it
        (strong, the default) or its write token `after` (eventual). Returns the applied sequence
        the answer is at least as of (taken before reading: an apply finishing meanwhile only makes
        the data newer)."""
        if req.consistency == "strong":
            await self.replica.wait_strong(req.after)
        else:
            if req.log_id is not None:
                await self.replica.check_log_id(req.log_id)
            await self.replica.wait_applied(req.after)
        return self.replica.applied_seq

    async def get(self, req: ShardGet) -> EntityReply:
        r = self.replica
        seq = await self._ready(req)
        # The in-memory view is as of `seq` exactly; only embeddings are read from Kuzu.
        entity = await r.store.call(reads.get_entity, req.id, True) if req.embedding else r.graph.get(req.id)
        if entity is None:
            raise NotFound(f"entity {req.id!r} not found")
        return EntityReply(entity=entity, applied_seq=seq)

    async def entities(self, req: ShardEntities) -> EntitiesReply:
        r = self.replica
        seq = await self._ready(req)
        return EntitiesReply(entities=r.graph.entities_by_ids(req.ids), applied_seq=seq)

    async def edges(self, req: ShardEdges) -> EdgesReply:
        r = self.replica
        seq = await self._ready(req)
        return EdgesReply(edges=r.graph.edges(req.ids, req.direction, req.types, req.limit), applied_seq=seq)

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
        """Run in the replica's query worker (`shard/worker.py`), never on the thread that applies the
        log: admitted to its bounded queue at once or answered 503 with `retry_after_ms`; within
        TORUA_QUERY_TIMEOUT (or the request's lower `timeout_ms`) of arrival or 408."""
        r = self.replica
        started = time.monotonic()
        limit = r.queries.limits.timeout_s
        timeout_s = limit if req.timeout_ms is None else min(limit, req.timeout_ms / 1000)
        r.queries.admit()
        try:
            seq = await self._ready(req)
            rows = await r.queries.run(req.query, req.params, seq, timeout_s, started)
        finally:
            r.queries.release()
        return QueryRowsReply(result=rows, applied_seq=seq)

    async def page(self, req: ShardPage) -> RawReply:
        """One more part of a reply too large for one message (protocol.PAGED_HEADER)."""
        return RawReply(self.paged.take(req.cursor, req.part))

    def pages(self, handler: Callable[[Q], Awaitable[R]]) -> Callable[[Q], Awaitable[RawReply]]:
        """The handler, its reply sent in parts when larger than one message."""

        async def paged(req: Q) -> RawReply:
            data = encode(await handler(req))
            if len(data) <= MAX_REPLY_BYTES:
                return RawReply(data)  # encoded once, here
            return self.paged.split(data, self.replica.node_id)

        return paged


def _endpoint(shard: int, op: p.Op[Q, R], handler: Callable[[Q], Awaitable[RawReply]]) -> Endpoint:
    """The endpoint of one operation; the handler must take the op's request and give its reply."""
    subject = subjects.shard_endpoint(shard, op.name)
    return Endpoint(op.name, subject, handler, op.request, op.description, subjects.shard_queue(shard), True)


async def start_shard_service(replica: ServedReplica) -> ServiceHandle:
    api = ShardApi(replica)
    n = replica.shard
    eps = [
        _endpoint(n, p.GET, api.pages(api.get)),
        _endpoint(n, p.ENTITIES, api.pages(api.entities)),
        _endpoint(n, p.EDGES, api.pages(api.edges)),
        _endpoint(n, p.KV_GET, api.pages(api.kv_get)),
        _endpoint(n, p.VECTOR, api.pages(api.vector)),
        _endpoint(n, p.TEXT_STATS, api.pages(api.text_stats)),
        _endpoint(n, p.TEXT, api.pages(api.text)),
        _endpoint(n, p.MENTIONS, api.pages(api.mentions)),
        _endpoint(n, p.CHUNKS, api.pages(api.chunks)),
        _endpoint(n, p.QUERY, api.pages(api.query)),
        # Parts of large replies are held by this replica only: its own subject, no queue group.
        Endpoint(p.PAGE_OP, p.page_subject(n, replica.node_id), api.page, ShardPage,
                 "One more part of a reply too large for one message", None, True),
    ]
    return await add_endpoints(
        replica.nc,
        name=subjects.SHARD_SERVICE,
        version=__version__,
        description=f"Shard {n} replica on node {replica.node_id}",
        endpoints=eps,
        metadata={"shard": str(n), "node_id": replica.node_id},
    )

