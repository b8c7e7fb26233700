"""The data API facade every node serves in one queue group (`torua.graph.*`, `torua.kv.*`).

Writes are validated, split by shard and published to the write-ahead log; reads go to the shards
through a ShardClient (`router/client.py`) and graph reads (`router/graph.py`). Repeated fan-out
reads are served from the result cache (`router/cache.py`) while every shard they read is unchanged.
Search and retrieval (`torua_node.rag`) sit beside this facade, not behind it; the composition root
(`torua_node.main`) wires them all into one service with `start_data_service`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError

from torua import subjects
from torua.endpoints import Endpoint, RawReply, ServiceHandle, add_endpoints, encode
from torua.errors import PayloadTooLarge, Unavailable
from torua.hlc import HybridClock
from torua.model import (
    DeleteReply,
    DeleteRequest,
    GetReply,
    GetRequest,
    KVDeleteRequest,
    KVGetRequest,
    KVPutRequest,
    KVReply,
    NeighborsReply,
    NeighborsRequest,
    QueryReply,
    QueryRequest,
    RetrieveRequest,
    ShardStatus,
    TextSearchRequest,
    Tokens,
    UpsertReply,
    UpsertRequest,
    VectorSearchRequest,
)
from torua.natsserver import MAX_PAYLOAD
from torua.subjects import APPLIED_RESET, WAL_STREAM, wal_subject
from torua.version import __version__
from torua_node.router.backpressure import ApplyLag
from torua_node.router.cache import ResultCache
from torua_node.router.client import EmbedderProvider, LocalCalls, ShardClient, Status, is_partial, token
from torua_node.router.graph import GraphReads
from torua_node.router.query import Queries
from torua_node.router.readpoint import every_shard, reading
from torua_node.router.split import kv_shard, split_delete, split_kv, split_upsert
from torua_node.router.versions import WriteVersions
from torua_node.shard.protocol import (
    GET,
    KV_GET,
    HostedVector,
    NodeShards,
    ShardGet,
    ShardKVGet,
)
from torua_node.shard.wal import WalEntry, encode_entry

__all__ = ["DataApi", "DataService", "LocalShards", "follow_applied", "start_data_service", "MAX_ENTRY_BYTES"]

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 10.0
JS_MAX_BYTES_EXCEEDED = 10077  # JetStream's error code for a publish to a stream at its byte limit
# Leave room for headers and protocol framing under max_payload.
MAX_ENTRY_BYTES = MAX_PAYLOAD - 64 * 1024

# The reads whose results are cached: requests that carry write tokens, replies that say which shards
# answered and how far each had applied.
CachedRequest = TypeVar(
    "CachedRequest", NeighborsRequest, QueryRequest, VectorSearchRequest, TextSearchRequest, RetrieveRequest
)


class _FannedOut(Protocol):
    partial: bool
    shards: dict[str, ShardStatus]


CachedReply = TypeVar("CachedReply", bound=_FannedOut)


class LocalShards(LocalCalls, Protocol):
    """The shard replicas hosted in this process (wired by the node, `node/replicas.py`): the
    router's requests to a shard with a serving replica here are answered in-process (`LocalCalls`),
    and the node answers for all of them at once the client's direct search and other routers'
    fan-out rounds."""

    async def vector(self, req: HostedVector) -> RawReply:
        """`torua.shard.all.vector`: the asked shards this node serves (`shard/api.search_hosted`), a
        `HostedHits` encoded (without shards where it would not fit in one message)."""
        ...

    async def batch(self, req: NodeShards) -> RawReply:
        """`torua.shard.node.<id>.batch`: one operation for several shards served here, a
        `NodeShardsReply` encoded."""
        ...


class DataApi:
    def __init__(
        self,
        js: JetStreamContext,
        client: ShardClient,
        graph: GraphReads,
        embedder: EmbedderProvider,
        cache: ResultCache,
        clock: HybridClock | None = None,
        queries: Queries | None = None,
        lag: ApplyLag | None = None,
    ) -> None:
        self.js = js
        self.client = client
        self.graph = graph
        self.embedder = embedder
        self.cache = cache
        self.queries = queries or Queries(client)
        # One version per write, the same in every shard's entry: the copies apply last-writer-wins
        # by it (docs/consistency.md, "Convergence").
        self.clock = clock or HybridClock()
        self.versions = WriteVersions(js, self.clock)  # a retried write's version (js None: the clock's)
        self.lag = lag or ApplyLag(max_lag=0)  # write backpressure; off unless the node sets a limit

    def cached(
        self, name: str, handler: Callable[[CachedRequest], Awaitable[CachedReply]]
    ) -> Callable[[CachedRequest], Awaitable[CachedReply]]:
        """Serve repeated eventual reads from the cache while every shard they read is unchanged.

        A strong read (the default) is never answered from the cache: the cache learns of other
        routers' writes only when replicas announce them, so it cannot know the end of the log. Its
        answer is stored, though, for eventual reads of the same thing."""

        async def run(req: CachedRequest) -> CachedReply:
            key = name.encode() + b"\0" + encode(msgspec.structs.replace(req, after={}, consistency="eventual"))
            if req.consistency == "eventual":
                hit = self.cache.get(key, req.after)
                if hit is not None:
                    return cast(CachedReply, hit)  # stored under this handler's name: its reply type
            reply = await handler(req)
            seqs = {int(s): st.applied_seq for s, st in reply.shards.items()}
            known = {s: seq for s, seq in seqs.items() if seq is not None}
            if not reply.partial and known and len(known) == len(seqs):
                self.cache.put(key, reply, known)
            return reply

        return run

    # --- writes -------------------------------------------------------------------------------

    async def _publish(self, entries: dict[int, WalEntry], request_id: str) -> Tokens:
        self.lag.check(entries, time.monotonic())  # before anything is stored: a refused write stores nothing
        payloads = {s: encode_entry(e) for s, e in entries.items()}
        for s, data in payloads.items():
            if len(data) > MAX_ENTRY_BYTES:
                raise PayloadTooLarge(
                    f"the part of this write for shard {s} is {len(data)} bytes (limit {MAX_ENTRY_BYTES}); "
                    "send smaller batches"
                )

        async def one(shard: int, data: bytes) -> int:
            headers = {"Nats-Msg-Id": f"{request_id}:{shard}"}
            ack = await self.js.publish(
                wal_subject(shard), data, stream=WAL_STREAM, headers=headers, timeout=PUBLISH_TIMEOUT_S
            )
            return int(ack.seq)

        results = await asyncio.gather(*(one(s, d) for s, d in payloads.items()), return_exceptions=True)
        seqs = {s: r for s, r in zip(payloads, results) if not isinstance(r, BaseException)}
        failed = [s for s in payloads if s not in seqs]
        if any(isinstance(r, APIError) and r.err_code == JS_MAX_BYTES_EXCEEDED for r in results):
            raise Unavailable(
                f"the write-ahead log is full (TORUA_WAL_MAX_BYTES) and refused shards {failed}: snapshots "
                "and purging free it (docs/operations.md, \"Log retention\"); retry later with the same "
                f"request_id {request_id!r}"
            )
        if failed:
            raise Unavailable(
                f"the write-ahead log did not confirm shards {failed}; retry with the same request_id "
                f"{request_id!r} (shards already stored are not written twice)"
            )
        log.debug("write %s stored on shards %s", request_id, sorted(payloads), extra={"request_id": request_id})
        now = time.monotonic()
        for s, seq in seqs.items():
            self.cache.note(s, seq)
            self.lag.published(s, seq, now)
        return {str(s): seq for s, seq in seqs.items()}

    async def _version(self, request_id: str | None) -> int:
        """A write's version: the one an earlier attempt of it got, for a request id the caller
        chose (`WriteVersions`); an id made here is new."""
        return self.clock.now() if request_id is None else await self.versions.of(request_id)

    async def upsert(self, req: UpsertRequest) -> UpsertReply:
        request_id = req.request_id or uuid.uuid4().hex
        version = await self._version(req.request_id)
        # On a thread: a configured embedder may call a model or an HTTP endpoint.
        entries = await asyncio.to_thread(
            split_upsert, req, self.client.num_shards, self.embedder(), request_id, time.time(), version
        )
        tokens = await self._publish(entries, request_id)
        written = {
            "documents": len(req.documents),
            "chunks": len(req.chunks),
            "entities": len(req.entities),
            "relations": len(req.relations),
        }
        return UpsertReply(written=written, tokens=tokens, request_id=request_id)

    async def delete(self, req: DeleteRequest) -> DeleteReply:
        request_id = req.request_id or uuid.uuid4().hex
        entries = split_delete(req, self.client.num_shards, request_id, time.time(), await self._version(req.request_id))
        tokens = await self._publish(entries, request_id)
        deleted = {"entities": len(set(req.entities)), "documents": len(set(req.documents)),
                   "relations": len({(r.source, r.target, r.type) for r in req.relations})}
        return DeleteReply(deleted=deleted, tokens=tokens, request_id=request_id)

    # A key lives on one shard: a retried kv write is stored whole or not at all, so its version
    # needs no record (`WriteVersions`).
    async def kv_put(self, req: KVPutRequest) -> KVReply:
        request_id = req.request_id or uuid.uuid4().hex
        entries = split_kv(req.key, req.value, self.client.num_shards, request_id, time.time(), self.clock.now())
        return KVReply(key=req.key, token=await self._publish(entries, request_id))

    async def kv_delete(self, req: KVDeleteRequest) -> KVReply:
        request_id = req.request_id or uuid.uuid4().hex
        entries = split_kv(req.key, None, self.client.num_shards, request_id, time.time(), self.clock.now())
        return KVReply(key=req.key, token=await self._publish(entries, request_id))

    # --- reads --------------------------------------------------------------------------------

    async def get(self, req: GetRequest) -> GetReply:
        shard = self.client.owner(req.id)
        sreq = ShardGet(id=req.id, embedding=req.embedding, after=token(req.after, shard), consistency=req.consistency)
        reply = await self.client.call(shard, GET, sreq)  # in-process when a replica serves here
        return GetReply(entity=reply.entity, shard=shard)

    async def kv_get(self, req: KVGetRequest) -> KVReply:
        shard = kv_shard(req.key, self.client.num_shards)
        sreq = ShardKVGet(key=req.key, after=token(req.after, shard), consistency=req.consistency)
        reply = await self.client.call(shard, KV_GET, sreq)
        return KVReply(key=req.key, value=reply.value)

    async def neighbors(self, req: NeighborsRequest) -> NeighborsReply:
        status: Status = {}
        # A round per hop, then the entities: one log end per shard, all learnt beside the first round
        # (from the second round on, most shards are read).
        every = every_shard(self.client.num_shards, req.consistency) if req.hops > 0 else ()
        with reading(self.client.log_ends, prefetch=every):
            found = await self.graph.traverse(
                req.ids, req.hops, req.direction, req.types, req.limit, req.after, status, consistency=req.consistency
            )
            nodes = await self.graph.entities(list(found.reached), req.after, status, consistency=req.consistency)
        nodes.sort(key=lambda n: (found.reached[n.id], n.id))
        return NeighborsReply(nodes=nodes, edges=found.edges, partial=is_partial(status), shards=status)

    async def query(self, req: QueryRequest) -> QueryReply:
        # Time limit, bounded concurrency and size limits: router/query.py (Queries).
        return await self.queries.answer(req)


async def follow_applied(nc: NATS, cache: ResultCache, lag: ApplyLag | None = None) -> None:
    """Learn how far each shard's replicas have applied, so cached results expire in time and
    writes to a shard whose replicas fall behind are held back (`lag`)."""

    async def on_applied(msg: Msg) -> None:
        try:
            shard = int(msg.subject.split(".")[2])
            if msg.data == APPLIED_RESET:
                cache.forget(shard)
                if lag is not None:
                    lag.forget(shard)
            else:
                cache.note(shard, int(msg.data))
                if lag is not None:
                    lag.applied(shard, int(msg.data))
        except ValueError:
            log.debug("ignoring malformed applied notice on %s", msg.subject)

    await nc.subscribe(subjects.SHARD_APPLIED_ALL, cb=on_applied)


@dataclass(frozen=True, slots=True)
class DataService:
    """The running data API of a node: its service, and the result cache its metrics report."""

    service: ServiceHandle
    cache: ResultCache


async def start_data_service(nc: NATS, endpoints: list[Endpoint]) -> ServiceHandle:
    """The `torua-api` service with these endpoints, in the queue group every node shares."""
    return await add_endpoints(
        nc, name=subjects.API_SERVICE, version=__version__, description="Torua data API (graph, kv)", endpoints=endpoints
    )
