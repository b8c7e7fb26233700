"""A shard replica's side of the router–shard protocol (`torua_node.shard.protocol`): one endpoint
per operation on `torua.shard.<n>.<op>`, in the shard's queue group, answered by any caught-up
replica. Every answer waits until the replica has applied the request's write token (`after`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import msgspec
import numpy as np
from nats.aio.client import Client as NATS

from torua import subjects
from torua.endpoints import Endpoint, RawReply, ServiceHandle, add_endpoints, encode
from torua.errors import BadRequest, NotFound, ResourceLimit, ToruaError, Unavailable
from torua.natsserver import MAX_PAYLOAD
from torua.version import __version__
from torua.wire import Reply
from torua_node.shard import protocol as p
from torua_node.shard.protocol import (
    ChunksReply,
    ChunkStemsReply,
    EdgesReply,
    EntitiesReply,
    EntityReply,
    HitsReply,
    HostedHits,
    HostedVector,
    KVValueReply,
    MentionsReply,
    QueryRowsReply,
    ShardChunks,
    ShardChunkStems,
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
    TextReply,
    TextStatsReply,
    name_coverage,
)
from torua_node.shard.readindex import LogLook, stream_ends
from torua_node.shard.worker import ShardQueries
from torua_node.storage import reads
from torua_node.storage.chunkview import ChunkView
from torua_node.storage.graphview import GraphView
from torua_node.storage.store import ShardStore
from torua_node.storage.textindex import TextIndex
from torua_node.storage.vectors import VectorIndex

__all__ = ["ServedReplica", "ShardApi", "start_shard_service", "search_hosted", "Served", "SHARD_OPS", "served_op", "served_named"]

log = logging.getLogger(__name__)

Q = TypeVar("Q", bound=ShardRequest)
R = TypeVar("R", bound=Reply)
T = TypeVar("T")


class ServedReplica(Protocol):
    """What the shard API reads of a replica (`torua_node.shard.replica.ShardReplica`)."""

    shard: int
    node_id: str
    nc: NATS
    dim: int
    applied_seq: int
    log_id: int | None  # the log this replica follows (logcheck.py); None until known
    store: ShardStore
    entity_index: VectorIndex
    chunk_index: VectorIndex
    entity_text: TextIndex
    chunk_text: TextIndex
    graph: GraphView
    chunk_view: ChunkView
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
        (strong, the default: `wait_strong`, which learns its shard's log end from the node's one
        look at the stream for all its shards, readindex.StreamEnds — one JetStream request while
        nothing was written) or its write token `after` (eventual). Returns the applied sequence
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
        self.check_dim(req.vector)
        seq = await self._ready(req)
        return HitsReply(hits=self.nearest(req.vector, req.k, req.target), applied_seq=seq)

    def check_dim(self, vector: list[float]) -> None:
        dim = self.replica.dim
        if len(vector) != dim:
            raise BadRequest(f"vector has {len(vector)} values; this cluster's embedding_dim is {dim}")

    def nearest(self, vector: list[float] | np.ndarray, k: int, target: str) -> list[tuple[str, float]]:
        """The search itself, on the replica as it is now (the caller waited as the request asks)."""
        r = self.replica
        index = r.chunk_index if target == "chunks" else r.entity_index
        return index.search(np.asarray(vector, np.float32), k)

    async def text_stats(self, req: ShardTextStats) -> TextStatsReply:
        r = self.replica
        seq = await self._ready(req)
        index = r.chunk_text if req.target == "chunks" else r.entity_text
        df, n_docs, total = index.stats(req.terms)
        return TextStatsReply(df=df, n_docs=n_docs, total_length=total, applied_seq=seq)

    async def text(self, req: ShardText) -> TextReply:
        r = self.replica
        seq = await self._ready(req)
        index = r.chunk_text if req.target == "chunks" else r.entity_text
        hits = index.search(req.idf, req.avg_length, req.k)
        if req.target != "entities" or not req.graph_edges or not hits:
            return TextReply(hits=hits, applied_seq=seq)
        # The named hits' rows and relations, from the same state as the hits (no await in between):
        # an entity's relations are all stored with it, so this shard holds every one of them.
        rows = r.graph.entities_by_ids([i for i, _ in (hits[: req.graph_top] if req.graph_top else hits)])
        if req.graph_named > 0:
            rows = [e for e in rows if (name_coverage(e.name, req.idf) or 0.0) >= req.graph_named]
        edges = r.graph.edges([e.id for e in rows], "both", None, req.graph_edges)
        return TextReply(hits=hits, applied_seq=seq, entities=rows, edges=edges)

    async def mentions(self, req: ShardMentions) -> MentionsReply:
        seq = await self._ready(req)
        return MentionsReply(mentions=self.replica.chunk_view.mentions_of(req.entity_ids, req.limit), applied_seq=seq)

    async def chunks(self, req: ShardChunks) -> ChunksReply:
        seq = await self._ready(req)
        return ChunksReply(chunks=self.replica.chunk_view.chunks_by_ids(req.ids), applied_seq=seq)

    async def chunk_stems(self, req: ShardChunkStems) -> ChunkStemsReply:
        r = self.replica
        seq = await self._ready(req)
        return ChunkStemsReply(uses=stems_used(r.chunk_text, req), applied_seq=seq)

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


def stems_used(index: TextIndex, req: ShardChunkStems) -> dict[str, int]:
    """Per chunk of `req.ids` in `index`, how many of `req.stems` its indexed words have (ShardChunkStems)."""
    wanted, n, least = set(req.stems), req.stem_length, req.min_length
    out: dict[str, int] = {}
    for chunk_id in dict.fromkeys(req.ids):
        terms = index.terms(chunk_id)
        if terms is not None:
            out[chunk_id] = len(wanted.intersection({t[:n] for t in terms if len(t) >= least}))
    return out


async def search_hosted(apis: Mapping[int, ShardApi], req: HostedVector, unasked: list[int] | None = None) -> HostedHits:
    """`torua.shard.all.vector` on one node: the search of each asked shard whose replica here serves
    (`apis`), answered as that shard's own endpoint answers it (`ShardApi.vector`, its write token
    from `req.after`), all at once. A shard that cannot answer now (not caught up in time, stopped
    meanwhile) is left out, for the client to ask its queue group; a 4xx (the request's fault, the
    same on every shard) is the reply. `unasked`: the shards this node serves that the request did
    not ask (HostedHits).

    A strong request searches while the node's one look at the log is on its way
    (`_searched_while_looking`): a shard whose replica had applied exactly its log's end before
    the look began answers with that search; any other waits and is searched as its endpoint would.
    With `ends_from`, only a node serving that shard looks (at every asked shard's log) and sends the
    look; the others search at once (`_searched_at_once`) for the asker to check against it."""
    for api in apis.values():
        api.check_dim(req.vector)  # the same on every shard: one 400 for the whole request
        break
    vector = np.asarray(req.vector, np.float32)
    strong = req.consistency == "strong"
    if strong and req.ends_from is not None and req.ends_from not in apis:
        return await _searched_at_once(apis, req, unasked)
    early: dict[int, HitsReply] = {}
    look: LogLook | None = None
    if strong and apis:
        # The node serving `ends_from` looks at every asked shard's log, for the other nodes' answers.
        every = req.shards if req.ends_from is not None else list(apis)
        early, look = await _searched_while_looking(apis, req, vector, every)

    async def one(shard: int, api: ShardApi) -> HitsReply:
        after = int(req.after.get(str(shard), 0))
        if shard in early:
            return early[shard]
        ask = ShardVector(vector=req.vector, k=req.k, target=req.target, after=after, consistency=req.consistency)
        r = api.replica
        if look is not None and r.log_id == look.log_id and look.ends.get(shard, 0) >= r.applied_seq:
            # Behind the end the look found: wait for it (in that log), as a router's read point would.
            end = look.ends.get(shard, 0)
            ask = msgspec.structs.replace(ask, after=max(after, end), consistency="eventual", log_id=look.log_id)
        return await api.vector(ask)

    answered = await _each_shard(apis, one)
    if req.ends_from is not None and look is not None:
        asked = set(req.shards)
        ends = {s: end for s, end in look.ends.items() if s in asked}
        return HostedHits(shards=answered, unasked=unasked or [], log_id=look.log_id, ends=ends)
    return HostedHits(shards=answered, unasked=unasked or [])


async def _searched_at_once(apis: Mapping[int, ShardApi], req: HostedVector, unasked: list[int] | None) -> HostedHits:
    """A strong `HostedVector` on a node not serving its `ends_from`: each shard searched as soon as
    its replica has applied the request's write token, without a look at the log; the answer names
    each replica's log, for the asker to check against the ends the `ends_from` node learnt (a
    replica whose log is not known, or changed meanwhile, is left out)."""

    async def one(shard: int, api: ShardApi) -> tuple[int | None, HitsReply]:
        log_id = api.replica.log_id
        after = int(req.after.get(str(shard), 0))
        ask = ShardVector(vector=req.vector, k=req.k, target=req.target, after=after, consistency="eventual")
        reply = await api.vector(ask)
        return (log_id if api.replica.log_id == log_id else None), reply

    searched = await _each_shard(apis, one)
    answered = {shard: reply for shard, (log_id, reply) in searched.items() if log_id is not None}
    log_ids = {shard: log_id for shard, (log_id, _) in searched.items() if log_id is not None}
    return HostedHits(shards=answered, unasked=unasked or [], log_ids=log_ids)


async def _each_shard(apis: Mapping[int, ShardApi], search: Callable[[int, ShardApi], Awaitable[T]]) -> dict[int, T]:
    """`search` of every shard at once: the shards that answered. A 4xx (the request's fault, the same
    on every shard) is raised; a shard that failed otherwise is left out, for its queue group."""
    shards = list(apis)
    results = await asyncio.gather(*(search(s, apis[s]) for s in shards), return_exceptions=True)
    answered: dict[int, T] = {}
    for shard, result in zip(shards, results):
        if not isinstance(result, BaseException):
            answered[shard] = result
        elif isinstance(result, ToruaError):
            if 400 <= result.code < 500:
                raise result
        elif isinstance(result, Exception):
            log.warning("shard %d: vector search failed; left to its queue group", shard, exc_info=result)
        else:
            raise result  # cancellation: never a shard's failure
    return answered


async def _searched_while_looking(
    apis: Mapping[int, ShardApi], req: HostedVector, vector: np.ndarray, every: list[int]
) -> tuple[dict[int, HitsReply], LogLook | None]:
    """Strong searches of these shards with the log's end learnt meanwhile: the look (one for all of
    them, `readindex.stream_ends`, begun after the request arrived) is sent first, each shard is
    searched as its replica is while it is on its way, and a search stands where the replica, in the
    log the look was at, had applied exactly the end the look found for its shard when it was
    searched (so the answer reflects every write acknowledged before the request arrived;
    `applied_seq` is that position). The others are left out (and the look returned, None if it
    failed): they wait as `ShardApi` does. The look covers the shards `every` (these, or all the
    request asks, for the other nodes' answers)."""
    shards = list(apis)
    look = asyncio.ensure_future(stream_ends(apis[shards[0]].replica.nc).get(every))
    searched: dict[int, tuple[int, int | None, list[tuple[str, float]]]] = {}
    for shard in shards:
        await asyncio.sleep(0)  # the look's request goes out meanwhile
        r = apis[shard].replica
        applied, log_id = r.applied_seq, r.log_id  # taken before the search: its data is at least as new
        if applied >= int(req.after.get(str(shard), 0)):
            searched[shard] = (applied, log_id, apis[shard].nearest(vector, req.k, req.target))
    try:
        found = await look
    except Exception:  # noqa: BLE001 - each shard's own path says why (Unavailable), or learns it after all
        return {}, None
    early = {
        shard: HitsReply(hits=hits, applied_seq=applied)
        for shard, (applied, log_id, hits) in searched.items()
        if log_id is not None and log_id == found.log_id and found.ends.get(shard, 0) == applied
    }
    return early, found


def _endpoint(shard: int, op: p.Op[Q, R], handler: Callable[[Q], Awaitable[RawReply]]) -> Endpoint:
    """The endpoint of one operation; the handler must take the op's request and give its reply."""
    subject = subjects.shard_endpoint(shard, op.name)
    return Endpoint(op.name, subject, handler, op.request, op.description, subjects.shard_queue(shard), True)


async def start_shard_service(replica: ServedReplica) -> ServiceHandle:
    api = ShardApi(replica)
    n = replica.shard
    eps = [
        # One endpoint per operation of SHARD_OPS, the table in-process callers use too (LocalReads).
        *(_endpoint(n, served.op, api.pages(served.handler(api))) for served in SHARD_OPS),
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



@dataclass(frozen=True, slots=True)
class Served(Generic[Q, R]):
    """One operation a replica serves: its `Op` and `ShardApi`'s handler of it (`handler(api)`, the
    bound method: looked up on each use). The shard's endpoints (`start_shard_service`) and the
    router's in-process calls to a replica in its own process (`node/replicas.py` `LocalReads`)
    both take them from SHARD_OPS, so they cannot disagree about which handler answers an op.

    `in_process`: whether a router in the replica's own process may call the handler directly. Not a
    query: its admission (`ShardQueries.admit`, a bounded queue per replica) must see every router's
    parts in the order they arrive, or each node's router would take its own shards' places first,
    and a query admitted on some shards and refused on others holds its places until its time limit;
    and its run must not be cancelled with its caller (the worker must read the answer to what it was
    sent), as over NATS it is not."""

    op: p.Op[Q, R]
    handler: Callable[[ShardApi], Callable[[Q], Awaitable[R]]]
    in_process: bool = True


SHARD_OPS: tuple[Served[Any, Any], ...] = (
    Served(p.GET, lambda api: api.get),
    Served(p.ENTITIES, lambda api: api.entities),
    Served(p.EDGES, lambda api: api.edges),
    Served(p.KV_GET, lambda api: api.kv_get),
    Served(p.VECTOR, lambda api: api.vector),
    Served(p.TEXT_STATS, lambda api: api.text_stats),
    Served(p.TEXT, lambda api: api.text),
    Served(p.MENTIONS, lambda api: api.mentions),
    Served(p.CHUNKS, lambda api: api.chunks),
    Served(p.CHUNK_STEMS, lambda api: api.chunk_stems),
    Served(p.QUERY, lambda api: api.query, in_process=False),
)
_SERVED_BY_NAME: dict[str, Served[Any, Any]] = {served.op.name: served for served in SHARD_OPS}


def served_op(op: p.Op[Q, R]) -> Served[Q, R] | None:
    """The SHARD_OPS entry of `op` (None: not a shard endpoint's operation)."""
    served = _SERVED_BY_NAME.get(op.name)
    return None if served is None or served.op != op else cast("Served[Q, R]", served)


def served_named(name: str) -> Served[Any, Any] | None:
    """The SHARD_OPS entry of the operation called `name` (None: no such operation)."""
    return _SERVED_BY_NAME.get(name)
