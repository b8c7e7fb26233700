"""The asyncio client: typed calls for every public subject, errors mapped from service codes."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from torua import subjects
from torua.connect import NatsAuth, PermissionDenied, connect
from torua.endpoints import error_of
from torua.errors import Conflict, Unavailable, error_for_code
from torua.model import (
    AnswerReply,
    Chunk,
    Consistency,
    DeleteReply,
    Document,
    Entity,
    GetReply,
    KVReply,
    NeighborsReply,
    QueryReply,
    Relation,
    RelationKey,
    RetrieveReply,
    SearchReply,
    Tokens,
    UpsertReply,
)
from torua.settings import DEFAULT_NATS_URL
from torua.subjects import WAL_STREAM, wal_subject
from torua.wire import (
    BroadcastReply,
    ClusterInfo,
    DigestReply,
    DrainReply,
    HealthReply,
    NodeHealthReply,
    NodeInfoReply,
    NodesReply,
    ShardMap,
    SnapshotReply,
)

__all__ = ["Client"]

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


def _backoff(state: RetryCallState) -> float:
    """Before retry n (1, 2, ...): 0.2 s, 0.4 s, ... up to 2 s, each jittered by ±50%; at least as
    long as the server's retry hint (`retry_after_ms` of a 503) when it gave one."""
    wait = min(0.1 * 2**state.attempt_number, 2.0) * (0.5 + random.random())
    error = state.outcome.exception() if state.outcome is not None else None
    hint = getattr(error, "retry_after_ms", None)
    return max(wait, hint / 1000) if hint else wait


# The server's default TORUA_QUERY_TIMEOUT (seconds): how long a query reply is awaited at least.
QUERY_TIMEOUT_S = 30.0


class Client:
    """`async with await Client.connect(url) as c: info = await c.cluster_info()`."""

    def __init__(self, nc: NATS, *, timeout: float = 10.0, retries: int = 3) -> None:
        self.nc = nc
        self.timeout = timeout
        self.retries = retries

    @classmethod
    async def connect(
        cls,
        url: str = DEFAULT_NATS_URL,
        *,
        timeout: float = 5.0,
        request_timeout: float = 10.0,
        retries: int = 3,
        auth: NatsAuth | None = None,
    ) -> Client:
        """`auth`: NATS credentials and TLS, e.g. `NatsAuth(user="client", password=...)` or
        `torua.settings.nats_auth_from_env()` (the TORUA_NATS_* variables); docs/security.md."""
        nc = await connect(url, name="torua-client", timeout=timeout, auth=auth)
        return cls(nc, timeout=request_timeout, retries=retries)

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- transport ----------------------------------------------------------------------------

    async def request(self, subject: str, payload: Any = None, *, timeout: float | None = None) -> Any:
        """Send a JSON request; returns the decoded reply or raises the mapped ToruaError.

        503s, timeouts and no-responders are retried with jittered backoff, `retries` times.
        """
        data = b"{}" if payload is None else payload if isinstance(payload, bytes) else _encoder.encode(payload)
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Unavailable),
            stop=stop_after_attempt(self.retries + 1),
            wait=_backoff,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._request_once(subject, data, timeout or self.timeout)
        raise AssertionError("unreachable")

    async def _request_once(self, subject: str, data: bytes, timeout: float) -> Any:
        try:
            msg = await self.nc.request(subject, data, timeout=timeout)
        except NoRespondersError:
            raise Unavailable(f"no service answers {subject}") from None
        except NatsTimeout:
            raise Unavailable(f"no reply on {subject} within {timeout:g}s") from None
        error = error_of(msg.headers, msg.data)
        if error is not None:
            raise error_for_code(error.code, error.description, error.retry_after_ms)
        return msgspec.json.decode(msg.data) if msg.data else None

    async def _typed(self, subject: str, reply_type: type[T], payload: Any = None) -> T:
        return msgspec.convert(await self.request(subject, payload), reply_type)

    # --- cluster admin ------------------------------------------------------------------------

    async def cluster_health(self) -> HealthReply:
        return await self._typed(subjects.CLUSTER_HEALTH, HealthReply)

    async def cluster_info(self) -> ClusterInfo:
        return await self._typed(subjects.CLUSTER_INFO, ClusterInfo)

    async def cluster_nodes(self) -> NodesReply:
        return await self._typed(subjects.CLUSTER_NODES, NodesReply)

    async def cluster_shards(self) -> ShardMap:
        return await self._typed(subjects.CLUSTER_SHARDS, ShardMap)

    async def broadcast(self, op: str, params: dict[str, Any] | None = None) -> BroadcastReply:
        return await self._typed(subjects.CLUSTER_BROADCAST, BroadcastReply, {"op": op, "params": params or {}})

    async def drain(
        self,
        node_id: str,
        *,
        wait: bool = False,
        timeout: float = 600.0,
        progress: Callable[[DrainReply], None] | None = None,
    ) -> DrainReply:
        """Decommission a node: its replicas move to other nodes, make-before-break, and it stays
        drained (across restarts too) until `cancel_drain`. With `wait`, poll until the shard map
        gives it nothing (calling `progress` with each report), or raise Unavailable after `timeout`."""
        reply = await self._typed(subjects.CLUSTER_DRAIN, DrainReply, {"node": node_id})
        if not wait:
            return reply
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if progress is not None:
                progress(reply)
            if reply.done:
                return reply
            if not reply.draining:
                raise Conflict(f"the drain of node {node_id} was cancelled")
            if asyncio.get_running_loop().time() > deadline:
                left = ", ".join(f"{s.shard} ({s.state})" for s in reply.shards)
                raise Unavailable(f"node {node_id} still holds {reply.remaining} shard(s) after {timeout:g}s: {left}")
            await asyncio.sleep(0.5)
            reply = await self.drain_status(node_id)

    async def snapshot(self, shards: list[int] | None = None, *, timeout: float = 600.0) -> SnapshotReply:
        """Snapshot these shards (all if None) into the object store now; the coordinator then
        purges their logs below what is still needed (docs/operations.md, "Log retention")."""
        payload = {} if shards is None else {"shards": shards}
        return msgspec.convert(await self.request(subjects.CLUSTER_SNAPSHOT, payload, timeout=timeout), SnapshotReply)

    async def drain_status(self, node_id: str) -> DrainReply:
        """How far draining a node has got (changes nothing)."""
        return await self._typed(subjects.CLUSTER_DRAIN, DrainReply, {"node": node_id, "action": "status"})

    async def cancel_drain(self, node_id: str) -> DrainReply:
        """Take a draining node back into placement: it gets its share of replicas again."""
        return await self._typed(subjects.CLUSTER_DRAIN, DrainReply, {"node": node_id, "action": "cancel"})

    async def node_health(self, node_id: str) -> NodeHealthReply:
        return await self._typed(subjects.node_endpoint(node_id, "health"), NodeHealthReply)

    async def node_info(self, node_id: str) -> NodeInfoReply:
        return await self._typed(subjects.node_endpoint(node_id, "info"), NodeInfoReply)

    async def node_control(self, node_id: str, op: str, params: dict[str, Any] | None = None) -> Any:
        return await self.request(subjects.node_endpoint(node_id, "control"), {"op": op, "params": params or {}})

    async def node_digest(self, node_id: str, shard: int) -> DigestReply:
        return await self._typed(subjects.node_endpoint(node_id, "digest"), DigestReply, {"shard": shard})

    async def latest_tokens(self) -> Tokens:
        """Write tokens for everything the log holds now: a read carrying them sees every write
        acknowledged before this call, whoever made it (a linearizable read, at a small cost).

        They come from JetStream itself, which the `client` and `admin` roles may not use
        (docs/security.md): for them this returns no tokens, and strong reads (the default) see
        every acknowledged write anyway; only eventual reads lose the guarantee."""
        js = self.nc.jetstream()
        try:
            kv = await js.key_value(subjects.KV_BUCKET)
        except PermissionDenied:
            return {}
        smap = msgspec.json.decode((await kv.get(subjects.KV_SHARDMAP)).value or b"", type=ShardMap)

        async def last(shard: int) -> tuple[str, int]:
            try:
                return str(shard), (await js.get_last_msg(WAL_STREAM, wal_subject(shard))).seq or 0
            except NotFoundError:
                return str(shard), 0

        pairs = await asyncio.gather(*(last(s) for s in range(smap.num_shards)))
        return {s: seq for s, seq in pairs if seq}

    # --- graph --------------------------------------------------------------------------------

    async def upsert(
        self,
        *,
        documents: list[Document] | None = None,
        chunks: list[Chunk] | None = None,
        entities: list[Entity] | None = None,
        relations: list[Relation] | None = None,
        request_id: str | None = None,
    ) -> UpsertReply:
        """Write a batch; the reply's `tokens` make later reads see it (`after=`)."""
        payload: dict[str, Any] = {
            "documents": documents or [],
            "chunks": chunks or [],
            "entities": entities or [],
            "relations": relations or [],
            # Fixed before the first attempt, so a retry after a lost reply is stored once.
            "request_id": request_id or uuid.uuid4().hex,
        }
        return await self._typed(subjects.GRAPH_UPSERT, UpsertReply, payload)

    async def delete(
        self, *, entities: list[str] | None = None, documents: list[str] | None = None, request_id: str | None = None
    ) -> DeleteReply:
        payload: dict[str, Any] = {
            "entities": entities or [],
            "documents": documents or [],
            "request_id": request_id or uuid.uuid4().hex,
        }
        return await self._typed(subjects.GRAPH_DELETE, DeleteReply, payload)

    async def delete_relations(self, relations: list[RelationKey], *, request_id: str | None = None) -> DeleteReply:
        """Delete relations, each named by source, target and type, at both of their ends."""
        payload = {"relations": relations, "request_id": request_id or uuid.uuid4().hex}
        return await self._typed(subjects.GRAPH_DELETE, DeleteReply, payload)

    async def get(
        self, entity_id: str, *, embedding: bool = False, after: Tokens | None = None, consistency: Consistency = "strong"
    ) -> GetReply:
        payload = {"id": entity_id, "embedding": embedding, "after": after or {}, "consistency": consistency}
        return await self._typed(subjects.GRAPH_GET, GetReply, payload)

    async def neighbors(
        self,
        ids: list[str],
        *,
        hops: int = 1,
        direction: str = "both",
        types: list[str] | None = None,
        limit: int = 1000,
        after: Tokens | None = None,
        consistency: Consistency = "strong",
    ) -> NeighborsReply:
        payload = {"ids": ids, "hops": hops, "direction": direction, "types": types, "limit": limit, "after": after or {}, "consistency": consistency}
        return await self._typed(subjects.GRAPH_NEIGHBORS, NeighborsReply, payload)

    # --- search and retrieval -------------------------------------------------------------------

    async def search_vector(
        self,
        *,
        vector: list[float] | None = None,
        text: str | None = None,
        k: int = 10,
        target: str = "chunks",
        after: Tokens | None = None,
        consistency: Consistency = "strong",
    ) -> SearchReply:
        payload: dict[str, Any] = {"k": k, "target": target, "after": after or {}, "consistency": consistency}
        payload |= {"vector": vector} if vector is not None else {"text": text}
        return await self._typed(subjects.SEARCH_VECTOR, SearchReply, payload)

    async def search_text(self, text: str, *, k: int = 10, target: str = "chunks", after: Tokens | None = None, consistency: Consistency = "strong") -> SearchReply:
        payload = {"text": text, "k": k, "target": target, "after": after or {}, "consistency": consistency}
        return await self._typed(subjects.SEARCH_TEXT, SearchReply, payload)

    async def search_hybrid(
        self, text: str, *, k: int = 10, target: str = "chunks", after: Tokens | None = None, consistency: Consistency = "strong"
    ) -> SearchReply:
        payload = {"text": text, "k": k, "target": target, "after": after or {}, "consistency": consistency}
        return await self._typed(subjects.SEARCH_HYBRID, SearchReply, payload)

    async def retrieve(
        self, question: str, *, k: int = 5, hops: int = 3, token_budget: int = 2000, after: Tokens | None = None, consistency: Consistency = "strong"
    ) -> RetrieveReply:
        payload = {"question": question, "k": k, "hops": hops, "token_budget": token_budget, "after": after or {}, "consistency": consistency}
        return await self._typed(subjects.RAG_RETRIEVE, RetrieveReply, payload)

    async def answer(
        self,
        question: str,
        *,
        k: int = 5,
        hops: int = 3,
        token_budget: int = 2000,
        after: Tokens | None = None,
        consistency: Consistency = "strong",
        timeout: float | None = None,
    ) -> AnswerReply:
        """An LLM answer over rag.retrieve's context, citing chunk ids (needs TORUA_LLM_URL on the nodes).

        Sent once, not retried: a model call is slow and costly, and the node already retried it.
        The default timeout leaves room for a slow model (at least 120 s).
        """
        payload = {"question": question, "k": k, "hops": hops, "token_budget": token_budget, "after": after or {}, "consistency": consistency}
        data = _encoder.encode(payload)
        reply = await self._request_once(subjects.RAG_ANSWER, data, timeout or max(self.timeout, 120.0))
        return msgspec.convert(reply, AnswerReply)

    async def query(
        self, cypher: str, params: dict[str, Any] | None = None, *, after: Tokens | None = None,
        consistency: Consistency = "strong", timeout_ms: int | None = None,
    ) -> QueryReply:
        """`timeout_ms` lowers the server's TORUA_QUERY_TIMEOUT for this query. The reply is awaited
        a little longer than the query may run, so the server's 408 arrives rather than a client
        timeout (which would be retried)."""
        payload: dict[str, Any] = {"cypher": cypher, "params": params or {}, "after": after or {}, "consistency": consistency}
        if timeout_ms is not None:
            payload["timeout_ms"] = timeout_ms
        limit_s = timeout_ms / 1000 if timeout_ms is not None else QUERY_TIMEOUT_S
        reply = await self.request(subjects.GRAPH_QUERY, payload, timeout=max(self.timeout, limit_s + 2.0))
        return msgspec.convert(reply, QueryReply)

    # --- key-value ----------------------------------------------------------------------------

    async def kv_put(self, key: str, value: str, *, request_id: str | None = None) -> KVReply:
        payload = {"key": key, "value": value, "request_id": request_id or uuid.uuid4().hex}
        return await self._typed(subjects.KV_PUT, KVReply, payload)

    async def kv_get(self, key: str, *, after: Tokens | None = None, consistency: Consistency = "strong") -> str:
        reply = await self._typed(subjects.KV_GET, KVReply, {"key": key, "after": after or {}, "consistency": consistency})
        return reply.value or ""

    async def kv_delete(self, key: str, *, request_id: str | None = None) -> KVReply:
        payload = {"key": key, "request_id": request_id or uuid.uuid4().hex}
        return await self._typed(subjects.KV_DELETE, KVReply, payload)

    async def wait_for_state(self, state: str = "green", timeout: float = 30.0) -> ClusterInfo:
        """Poll cluster.info until the cluster reaches `state` (green satisfies yellow)."""
        rank = {"red": 0, "yellow": 1, "green": 2}
        deadline = asyncio.get_running_loop().time() + timeout
        last: ClusterInfo | None = None
        while True:
            try:
                last = await self.cluster_info()
                if rank[last.state] >= rank[state]:
                    return last
            except Unavailable:
                pass
            if asyncio.get_running_loop().time() > deadline:
                seen = last.state if last else "no coordinator reply"
                raise Unavailable(f"cluster not {state} within {timeout:g}s (last: {seen})")
            await asyncio.sleep(0.2)
