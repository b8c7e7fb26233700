"""The data API every node serves in one queue group: validate, split by shard, publish, fan out."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from torua import subjects
from torua.embedders import embedder_from_env
from torua.embedding import Embedder
from torua.endpoints import Endpoint, ServiceHandle, add_endpoints, encode
from torua.errors import PayloadTooLarge, ToruaError, Unavailable, error_for_code
from torua.hashing import shard_for
from torua.model import (
    DeleteReply,
    DeleteRequest,
    EdgeOut,
    EntityOut,
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
from torua.subjects import WAL_STREAM, wal_subject
from torua.version import __version__
from torua.wire import ShardMap
from torua_node.cypher.execute import ShardRows, run_query
from torua_node.router.cache import ResultCache
from torua_node.router.split import kv_shard, split_delete, split_kv, split_upsert
from torua_node.shard.api import (
    EdgesReply,
    EntitiesReply,
    QueryRowsReply,
    ShardEdges,
    ShardEntities,
    ShardGet,
    ShardKVGet,
    ShardQuery,
)
from torua_node.shard.wal import WalEntry, encode_entry

__all__ = ["Router", "start_router_service"]

log = logging.getLogger(__name__)
R = TypeVar("R")
SHARD_TIMEOUT_S = 5.0
PUBLISH_TIMEOUT_S = 10.0
# Leave room for headers and protocol framing under max_payload.
MAX_ENTRY_BYTES = MAX_PAYLOAD - 64 * 1024


class Router:
    def __init__(self, nc: NATS, shardmap: Callable[[], ShardMap | None]) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self._shardmap = shardmap
        self._embedder: Embedder | None = None
        self.cache = ResultCache()

    async def follow_applied(self) -> None:
        """Learn how far each shard's replicas have applied, so cached results expire in time."""

        async def on_applied(msg: Msg) -> None:
            try:
                self.cache.note(int(msg.subject.split(".")[2]), int(msg.data))
            except ValueError:
                log.debug("ignoring malformed applied notice on %s", msg.subject)

        await self.nc.subscribe(subjects.SHARD_APPLIED_ALL, cb=on_applied)

    def cached(self, name: str, handler: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
        """Serve repeated reads from the cache while every shard they read is unchanged."""

        async def run(req: Any) -> Any:
            key = name.encode() + b"\0" + encode(msgspec.structs.replace(req, after={}))
            hit = self.cache.get(key, req.after)
            if hit is not None:
                return hit
            reply = await handler(req)
            seqs = {int(s): st.applied_seq for s, st in reply.shards.items()}
            if not reply.partial and seqs and None not in seqs.values():
                self.cache.put(key, reply, seqs)  # type: ignore[arg-type]
            return reply

        return run

    def shardmap(self) -> ShardMap:
        smap = self._shardmap()
        if smap is None:
            raise Unavailable("this node has not received the shard map yet; retry")
        return smap

    def embedder(self) -> Embedder:
        dim = self.shardmap().embedding_dim
        if self._embedder is None or self._embedder.dim != dim:
            self._embedder = embedder_from_env(dim)
        return self._embedder

    # --- writes -------------------------------------------------------------------------------

    async def _publish(self, entries: dict[int, WalEntry], request_id: str) -> Tokens:
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
            return ack.seq

        results = await asyncio.gather(*(one(s, d) for s, d in payloads.items()), return_exceptions=True)
        failed = [s for s, r in zip(payloads, results) if isinstance(r, BaseException)]
        if failed:
            raise Unavailable(
                f"the write-ahead log did not confirm shards {failed}; retry with the same request_id "
                f"{request_id!r} (shards already stored are not written twice)"
            )
        log.debug("write %s stored on shards %s", request_id, sorted(payloads), extra={"request_id": request_id})
        for s, seq in zip(payloads, results):
            self.cache.note(s, int(seq))  # type: ignore[arg-type]
        return {str(s): int(seq) for s, seq in zip(payloads, results)}  # type: ignore[arg-type]

    async def upsert(self, req: UpsertRequest) -> UpsertReply:
        request_id = req.request_id or uuid.uuid4().hex
        # On a thread: a configured embedder may call a model or an HTTP endpoint.
        entries = await asyncio.to_thread(
            split_upsert, req, self.shardmap().num_shards, self.embedder(), request_id, time.time()
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
        entries = split_delete(req, self.shardmap().num_shards, request_id, time.time())
        tokens = await self._publish(entries, request_id)
        deleted = {"entities": len(set(req.entities)), "documents": len(set(req.documents))}
        return DeleteReply(deleted=deleted, tokens=tokens, request_id=request_id)

    async def kv_put(self, req: KVPutRequest) -> KVReply:
        request_id = req.request_id or uuid.uuid4().hex
        entries = split_kv(req.key, req.value, self.shardmap().num_shards, request_id, time.time())
        return KVReply(key=req.key, token=await self._publish(entries, request_id))

    async def kv_delete(self, req: KVDeleteRequest) -> KVReply:
        request_id = req.request_id or uuid.uuid4().hex
        entries = split_kv(req.key, None, self.shardmap().num_shards, request_id, time.time())
        return KVReply(key=req.key, token=await self._publish(entries, request_id))

    # --- reads --------------------------------------------------------------------------------

    async def shard_call(self, shard: int, op: str, req: Any, reply_type: type[R]) -> R:
        """One request to a shard's queue group; a 503 or no responder is retried once."""
        data = encode(req)
        for attempt in (0, 1):
            try:
                msg = await self.nc.request(subjects.shard_endpoint(shard, op), data, timeout=SHARD_TIMEOUT_S)
            except (NoRespondersError, NatsTimeout) as exc:
                if attempt:
                    raise Unavailable(f"no replica of shard {shard} answered ({type(exc).__name__})") from None
                await asyncio.sleep(0.05)
                continue
            code = (msg.headers or {}).get("Nats-Service-Error-Code")
            if code is None:
                return msgspec.json.decode(msg.data, type=reply_type)
            err = error_for_code(int(code), _description(msg.data))
            if not isinstance(err, Unavailable) or attempt:
                raise err
        raise AssertionError("unreachable")

    @staticmethod
    def after(tokens: Tokens, shard: int) -> int:
        """The write token a request carries for one shard (0: no wait)."""
        return int(tokens.get(str(shard), 0))

    def owner(self, key: str) -> int:
        return shard_for(key, self.shardmap().num_shards)

    async def get(self, req: GetRequest) -> GetReply:
        shard = self.owner(req.id)
        after = self.after(req.after, shard)
        reply = await self.shard_call(shard, "get", ShardGet(id=req.id, after=after), _EntityReply)
        return GetReply(entity=reply.entity, shard=shard)

    async def kv_get(self, req: KVGetRequest) -> KVReply:
        shard = kv_shard(req.key, self.shardmap().num_shards)
        reply = await self.shard_call(
            shard, "kv_get", ShardKVGet(key=req.key, after=self.after(req.after, shard)), _KVValue
        )
        return KVReply(key=req.key, value=reply.value)

    async def gather_shards(
        self, by_shard: dict[int, Callable[[], Awaitable[R]]], status: dict[str, ShardStatus]
    ) -> dict[int, R]:
        """Run one call per shard concurrently; failures are recorded in `status`, never silent."""
        shards = list(by_shard)
        results = await asyncio.gather(*(by_shard[s]() for s in shards), return_exceptions=True)
        out: dict[int, R] = {}
        for s, r in zip(shards, results):
            if isinstance(r, ToruaError) and not isinstance(r, Unavailable):
                raise r
            if isinstance(r, BaseException):
                status[str(s)] = ShardStatus(ok=False, error=_reason(r))
                continue
            out[s] = r
            seen = status.get(str(s))
            if seen is None:
                status[str(s)] = ShardStatus(ok=True, applied_seq=getattr(r, "applied_seq", None))
            elif seen.ok and seen.applied_seq is not None:
                # A shard read several times: its oldest answer is what the whole reply is as of.
                seen.applied_seq = min(seen.applied_seq, getattr(r, "applied_seq", seen.applied_seq))
        return out

    async def entities(self, ids: list[str], after: Tokens, status: dict[str, ShardStatus]) -> list[EntityOut]:
        groups = self._group(ids)
        calls = {
            s: (lambda s=s, g=g: self.shard_call(s, "entities", ShardEntities(ids=g, after=self.after(after, s)), EntitiesReply))
            for s, g in groups.items()
        }
        replies = await self.gather_shards(calls, status)
        return [e for r in replies.values() for e in r.entities]

    def _group(self, ids: list[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = {}
        for i in ids:
            groups.setdefault(self.owner(i), []).append(i)
        return groups

    async def neighbors(self, req: NeighborsRequest) -> NeighborsReply:
        status: dict[str, ShardStatus] = {}
        visited, edges = await self.traverse(req.ids, req.hops, req.direction, req.types, req.limit, req.after, status)
        nodes = await self.entities(list(visited), req.after, status)
        nodes.sort(key=lambda n: (visited[n.id], n.id))
        partial = any(not st.ok for st in status.values())
        return NeighborsReply(nodes=nodes, edges=edges, partial=partial, shards=status)

    async def traverse(
        self,
        ids: list[str],
        hops: int,
        direction: str,
        types: list[str] | None,
        limit: int,
        after: Tokens,
        status: dict[str, ShardStatus],
    ) -> tuple[dict[str, int], list[EdgeOut]]:
        """Breadth-first frontier exchange: each hop asks the frontier's owning shards for their edges.

        Returns the ids reached with their hop distance (at most `limit`, nearest first, then by id)
        and the edges between reached ids, ordered by (source, type, target).
        """
        visited: dict[str, int] = {i: 0 for i in dict.fromkeys(ids)}
        edges: dict[tuple[str, str, str], EdgeOut] = {}
        frontier = list(visited)
        for hop in range(1, hops + 1):
            if not frontier or len(visited) >= limit:
                break
            found = await self._edges_of(frontier, direction, types, after, status)
            in_frontier = set(frontier)
            reached: set[str] = set()
            for e in found:
                edges[(e.source, e.type, e.target)] = e
                reached.update(f for f in _far_ends(e, in_frontier, direction) if f not in visited)
            frontier = sorted(reached)[: limit - len(visited)]
            visited.update({i: hop for i in frontier})
        kept = [e for _, e in sorted(edges.items()) if e.source in visited and e.target in visited]
        return visited, kept

    async def query(self, req: QueryRequest) -> QueryReply:
        seen: dict[int, int] = {}

        async def run_on_shard(shard: int, query: str, params: dict[str, Any]) -> ShardRows:
            ask = ShardQuery(query=query, params=params, after=self.after(req.after, shard))
            reply = await self.shard_call(shard, "query", ask, QueryRowsReply)
            seen[shard] = min(seen.get(shard, reply.applied_seq), reply.applied_seq)
            return reply.result

        result = await run_query(req.cypher, req.params, self.shardmap().num_shards, run_on_shard)
        for s, st in result.shards.items():
            if st.ok and int(s) in seen:
                st.applied_seq = seen[int(s)]
        return QueryReply(columns=result.columns, rows=result.rows, partial=result.partial, shards=result.shards)

    async def _edges_of(
        self, ids: list[str], direction: str, types: list[str] | None, after: Tokens, status: dict[str, ShardStatus]
    ) -> list[EdgeOut]:
        groups = self._group(ids)

        def call(s: int, g: list[str]) -> Callable[[], Awaitable[EdgesReply]]:
            q = ShardEdges(ids=g, direction=direction, types=types, limit=100_000, after=self.after(after, s))  # type: ignore[arg-type]
            return lambda: self.shard_call(s, "edges", q, EdgesReply)

        replies = await self.gather_shards({s: call(s, g) for s, g in groups.items()}, status)
        return [e for r in replies.values() for e in r.edges]


class _EntityReply(msgspec.Struct):
    entity: EntityOut


class _KVValue(msgspec.Struct):
    value: str


def _far_ends(e: EdgeOut, frontier: set[str], direction: str) -> list[str]:
    out = []
    if direction in ("out", "both") and e.source in frontier:
        out.append(e.target)
    if direction in ("in", "both") and e.target in frontier:
        out.append(e.source)
    return out


def _description(data: bytes) -> str:
    try:
        return str(msgspec.json.decode(data)["error"]["description"])
    except Exception:  # noqa: BLE001 - a foreign error body: keep what we can
        return data.decode("utf-8", "replace")[:500]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ToruaError):
        return exc.description
    return type(exc).__name__


async def start_router_service(nc: NATS, router: Router) -> ServiceHandle:
    from torua_node.rag.retrieve import Retriever
    from torua_node.rag.search import Search

    search = Search(router)
    retriever = Retriever(router, search)
    from torua_node.rag.answer import Answerer, AnswerRequest
    answerer = Answerer(retriever)
    q = subjects.API_QUEUE
    eps = [
        Endpoint("upsert", subjects.GRAPH_UPSERT, router.upsert, UpsertRequest, "Write documents, chunks, entities, relations", q, True),
        Endpoint("delete", subjects.GRAPH_DELETE, router.delete, DeleteRequest, "Delete entities, or documents with their chunks", q, True),
        Endpoint("get", subjects.GRAPH_GET, router.get, GetRequest, "One entity by id", q, True),
        Endpoint("neighbors", subjects.GRAPH_NEIGHBORS, router.cached("neighbors", router.neighbors), NeighborsRequest, "k-hop neighbourhood of ids", q, True),
        Endpoint("query", subjects.GRAPH_QUERY, router.cached("query", router.query), QueryRequest, "Read-only Cypher on every shard, merged exactly", q, True),
        Endpoint("search_vector", subjects.SEARCH_VECTOR, router.cached("search_vector", search.vector), VectorSearchRequest, "Top-k by embedding similarity (exact)", q, True),
        Endpoint("search_text", subjects.SEARCH_TEXT, router.cached("search_text", search.text), TextSearchRequest, "Top-k by BM25 with global statistics", q, True),
        Endpoint("search_hybrid", subjects.SEARCH_HYBRID, router.cached("search_hybrid", search.hybrid), TextSearchRequest, "BM25 and vector fused by reciprocal rank", q, True),
        Endpoint("rag_retrieve", subjects.RAG_RETRIEVE, router.cached("rag_retrieve", retriever.retrieve), RetrieveRequest, "GraphRAG context for a question", q, True),
        Endpoint("rag_answer", subjects.RAG_ANSWER, answerer.answer, AnswerRequest, "LLM answer over rag.retrieve, citing chunk ids", q, True),
        Endpoint("kv_put", subjects.KV_PUT, router.kv_put, KVPutRequest, "Store a value under a key", q, True),
        Endpoint("kv_get", subjects.KV_GET, router.kv_get, KVGetRequest, "Read a key", q, True),
        Endpoint("kv_delete", subjects.KV_DELETE, router.kv_delete, KVDeleteRequest, "Delete a key", q, True),
    ]
    return await add_endpoints(
        nc, name=subjects.API_SERVICE, version=__version__, description="Torua data API (graph, kv)", endpoints=eps
    )

