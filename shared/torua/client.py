"""The asyncio client: typed calls for every public subject, errors mapped from service codes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NotFoundError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from torua import subjects
from torua.connect import Connection, NatsAuth, PermissionDenied, connect
from torua.endpoints import error_of
from torua.errors import Conflict, NotFound, Unavailable, error_for_code
from torua.hashing import shard_for
from torua.hedge import HEDGE_AFTER_S, HedgeBudget, hedged_request
from torua.model import (
    AnswerReply,
    Chunk,
    Consistency,
    DeleteReply,
    Document,
    Entity,
    GetReply,
    GetRequest,
    KVGetRequest,
    KVReply,
    NeighborsReply,
    QueryReply,
    Relation,
    RelationKey,
    RetrieveReply,
    SearchReply,
    ShardStatus,
    Tokens,
    UpsertReply,
    VectorSearchRequest,
)
from torua.settings import DEFAULT_NATS_URL
from torua.shardwire import (
    GET,
    KV_GET,
    PAGED_HEADER,
    VECTOR,
    HitsReply,
    HostedHits,
    HostedVector,
    Op,
    ShardGet,
    ShardKVGet,
    ShardRequest,
    ShardVector,
    kv_shard,
    merge_hits,
)
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
    Reply,
    ShardMap,
    SnapshotReply,
)

__all__ = ["Client"]

log = logging.getLogger(__name__)

T = TypeVar("T")
Q = TypeVar("Q", bound=ShardRequest)
R = TypeVar("R", bound=Reply)
_encoder = msgspec.json.Encoder()


def _backoff(state: RetryCallState) -> float:
    """Before retry n (1, 2, ...): 0.2 s, 0.4 s, ... up to 2 s, each jittered by ±50%; at least as
    long as the server's retry hint (`retry_after_ms` of a 503) when it gave one."""
    wait = min(0.1 * 2**state.attempt_number, 2.0) * (0.5 + random.random())
    error = state.outcome.exception() if state.outcome is not None else None
    hint = getattr(error, "retry_after_ms", None)
    return max(wait, hint / 1000) if hint else wait


# Reads through the routers that are hedged (torua.hedge; docs/api.md, "Hedged reads"). Not hedged:
# writes, Cypher queries and LLM answers (slow by nature: a hedge would double their cost).
HEDGED_SUBJECTS = frozenset({
    subjects.GRAPH_GET, subjects.GRAPH_NEIGHBORS, subjects.KV_GET, subjects.SEARCH_VECTOR, subjects.SEARCH_TEXT,
    subjects.SEARCH_HYBRID, subjects.RAG_RETRIEVE,
})

# The server's default TORUA_QUERY_TIMEOUT (seconds): how long a query reply is awaited at least.
QUERY_TIMEOUT_S = 30.0

# Direct point reads (docs/api.md, "Direct point reads"): the shard count is re-read this often
# (in the background: reads go on with the known one), and at most this often after a direct 404
# (a 404 from a shard placed by a stale count would be wrong; checking every 404 would load the
# coordinator). After a failed attempt to learn it, it is not asked again for PLACEMENT_RETRY_S.
PLACEMENT_TTL_S = 30.0
PLACEMENT_RECHECK_S = 1.0
PLACEMENT_RETRY_S = 5.0
PLACEMENT_TIMEOUT_S = 2.0

# Direct vector search (docs/api.md, "Direct vector search"), under a router's fan-out policy
# (torua_node.router.client): each shard is given this long, and one that did not answer (no replica,
# a timeout, a 503 without a retry hint) is asked once more after DIRECT_RETRY_S.
DIRECT_SHARD_TIMEOUT_S = 5.0
DIRECT_RETRY_S = 0.05
# Every node answers `torua.shard.all.vector` for the shards it serves. Once the first node has
# answered, the others are awaited this much longer (at least; three times as long as the first
# answer took if that is more), then the shards still missing are asked through their queue groups.
SCATTER_GRACE_S = 0.05


class _ShardCount:
    """How many shards the cluster has: fixed when it is created, so learned once from
    `torua.cluster.info` (which the `client` role may ask, unlike `cluster.shards`), and re-read
    now and then in case the cluster was created again with another count."""

    def __init__(self, ask: Callable[[], Awaitable[ClusterInfo]]) -> None:
        self._ask = ask
        self.value: int | None = None
        self._learned_at = -float("inf")
        self._retry_at = -float("inf")
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[int | None] | None = None

    async def get(self) -> int | None:
        """The count (None: unknown, read through the router); learned now if never known."""
        age = time.monotonic() - self._learned_at
        if self.value is None:
            return await self.learn(PLACEMENT_TTL_S)
        if age > PLACEMENT_TTL_S and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.ensure_future(self.learn(PLACEMENT_TTL_S))
        return self.value

    def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()

    async def learn(self, max_age: float) -> int | None:
        """Ask the cluster unless the count was learned within `max_age` seconds (or asking failed
        within PLACEMENT_RETRY_S): concurrent callers share one question."""
        async with self._lock:
            now = time.monotonic()
            if now - self._learned_at <= max_age or now < self._retry_at:
                return self.value
            try:
                info = await self._ask()
            except Exception as exc:  # noqa: BLE001 - no coordinator, not permitted, an odd reply: the router places reads
                log.debug("direct reads: cannot learn the shard count (%s); reading through the router", exc)
                self._retry_at = time.monotonic() + PLACEMENT_RETRY_S
                return self.value
            if info.shards.total < 1:  # the cluster has no shard map yet
                self._retry_at = time.monotonic() + PLACEMENT_RETRY_S
                return self.value
            if self.value not in (None, info.shards.total):
                log.info("direct reads: the cluster now has %d shards (was %s)", info.shards.total, self.value)
            self.value, self._learned_at = info.shards.total, time.monotonic()
            return self.value


class _NotDirect(Exception):
    """The owning shard did not answer a direct read usably: ask the router instead."""


def _direct_reply(msg: Msg, reply_type: type[R]) -> R:
    """A shard's successful answer to a direct request, decoded; _NotDirect where the router must
    answer instead."""
    if (msg.headers or {}).get(PAGED_HEADER) is not None:
        raise _NotDirect  # larger than one message: the router fetches the parts
    try:
        return msgspec.json.decode(msg.data, type=reply_type)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise _NotDirect from None  # a replica of another version: the router speaks to it


class _ShardFailed(Exception):
    """A shard did not answer a direct search after the one retry: the reply is partial."""


class _Scatter:
    """The nodes' answers to one `torua.shard.all.vector` request, gathered until every shard has
    answered, a node refused the request (4xx), none listens, or time is up (`finish`)."""

    def __init__(self, num_shards: int, needs_look: bool) -> None:
        loop = asyncio.get_running_loop()
        self.num_shards = num_shards
        self.replies: dict[int, HitsReply] = {}  # answers as strong as the request asks
        # A strong request's look at the log (from the node serving its `ends_from`: identity, ends),
        # and the answers of the nodes that searched at once, to check against it: shard -> (log, reply).
        self.needs_look = needs_look
        self.look: tuple[int, dict[int, int]] | None = None
        self.pending: dict[int, tuple[int, HitsReply]] = {}
        self.refused = False
        self.unasked = False  # a node serves a shard beyond `num_shards`: the count is out of date
        self.started = loop.time()
        self.first: float | None = None
        self.done: asyncio.Future[None] = loop.create_future()
        self.timers = [loop.call_later(DIRECT_SHARD_TIMEOUT_S, self.finish)]

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        for timer in self.timers:
            timer.cancel()

    def add(self, msg: Msg) -> None:
        headers = msg.headers or {}
        if headers.get("Status") == "503" and not msg.data:
            return self.finish()  # no node listens (older nodes): every shard through its queue group
        error = error_of(msg.headers, msg.data)
        if error is not None:
            if 400 <= error.code < 500:
                self.refused = True  # the request's fault: the router's error is the answer
                return self.finish()
            return None  # that node's shards are asked through their queue groups
        try:
            answer = msgspec.json.decode(msg.data, type=HostedHits)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None  # a node of another version: its shards through their queue groups
        if answer.unasked:
            self.unasked = True
            return self.finish()
        looked = answer.ends is not None and answer.log_id is not None
        if looked and self.look is None and answer.log_id is not None and answer.ends is not None:
            self.look = (answer.log_id, answer.ends)
        for shard, reply in answer.shards.items():
            if not 0 <= shard < self.num_shards:
                continue
            if looked or not self.needs_look:
                self.replies.setdefault(shard, reply)
            elif shard in answer.log_ids:
                self.pending.setdefault(shard, (answer.log_ids[shard], reply))
        if len(self.replies.keys() | self.pending.keys()) == self.num_shards and (self.look or not self.needs_look):
            return self.finish()
        if self.first is None:
            loop = asyncio.get_running_loop()
            self.first = loop.time()
            grace = max(SCATTER_GRACE_S, 3 * (self.first - self.started))
            self.timers.append(loop.call_later(grace, self.finish))
        return None


    def answered(self) -> dict[int, HitsReply]:
        """The shards answered: as strong as asked, or searched at once by a replica of the log the
        look was at, that had applied at least the end the look found for its shard (so reflecting
        every write acknowledged before the request was sent). The others: none (ask them)."""
        out = dict(self.replies)
        if self.look is not None:
            log_id, ends = self.look
            for shard, (replica_log, reply) in self.pending.items():
                if shard not in out and replica_log == log_id and shard in ends and reply.applied_seq >= ends[shard]:
                    out[shard] = reply
        return out


class Client:
    """`async with await Client.connect(url) as c: info = await c.cluster_info()`."""

    def __init__(
        self, nc: NATS, *, timeout: float = 10.0, retries: int = 3, direct_reads: bool = True,
        hedge_after: float | None = HEDGE_AFTER_S,
    ) -> None:
        self.nc = nc
        self.timeout = timeout
        self.retries = retries
        # A read unanswered this long is asked again (torua.hedge), within the budget; None: never.
        self.hedge_after = hedge_after
        self.hedges = HedgeBudget()
        # `get` and `kv_get` straight to the owning shard (docs/api.md, "Direct point reads").
        self.direct_reads = direct_reads
        # `search_vector` by vector straight to every shard too; off once this user is refused them.
        self.direct_search = direct_reads
        self._shards = _ShardCount(self._placement_info)
        self._scatter_inbox: str | None = None  # the subscription nodes' search answers come back to
        self._scatters: dict[str, _Scatter] = {}
        self._scatter_ids = 0

    @classmethod
    async def connect(
        cls,
        url: str = DEFAULT_NATS_URL,
        *,
        timeout: float = 5.0,
        request_timeout: float = 10.0,
        retries: int = 3,
        auth: NatsAuth | None = None,
        direct_reads: bool = True,
        hedge_after: float | None = HEDGE_AFTER_S,
    ) -> Client:
        """`auth`: NATS credentials and TLS, e.g. `NatsAuth(user="client", password=...)` or
        `torua.settings.nats_auth_from_env()` (the TORUA_NATS_* variables); docs/security.md.
        `direct_reads`: `get` and `kv_get` ask the owning shard without the router's hop, falling
        back to the router whenever the shard cannot answer (docs/api.md, "Direct point reads").
        `hedge_after`: a read unanswered this many seconds is asked again, the first answer winning
        (None: never; torua.hedge, docs/api.md, "Hedged reads")."""
        nc = await connect(url, name="torua-client", timeout=timeout, auth=auth)
        return cls(nc, timeout=request_timeout, retries=retries, direct_reads=direct_reads, hedge_after=hedge_after)

    async def close(self) -> None:
        self._shards.close()
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
            msg = await self._ask(subject, data, timeout, hedged=subject in HEDGED_SUBJECTS)
        except NoRespondersError:
            raise Unavailable(f"no service answers {subject}") from None
        except NatsTimeout:
            raise Unavailable(f"no reply on {subject} within {timeout:g}s") from None
        error = error_of(msg.headers, msg.data)
        if error is not None:
            raise error_for_code(error.code, error.description, error.retry_after_ms)
        return msgspec.json.decode(msg.data) if msg.data else None

    async def _ask(self, subject: str, data: bytes, timeout: float, *, hedged: bool) -> Msg:
        """`nc.request`; a `hedged` one (a read) asked again while it has no answer (torua.hedge)."""
        return await hedged_request(self.nc, subject, data, timeout, self.hedge_after if hedged else None, self.hedges)

    async def _typed(self, subject: str, reply_type: type[T], payload: Any = None) -> T:
        return msgspec.convert(await self.request(subject, payload), reply_type)

    # --- direct point reads -------------------------------------------------------------------

    async def _placement_info(self) -> ClusterInfo:
        data = await self._request_once(subjects.CLUSTER_INFO, b"{}", min(self.timeout, PLACEMENT_TIMEOUT_S))
        return msgspec.convert(data, ClusterInfo)

    async def _direct(
        self, op: Op[Q, R], place: Callable[[int], int], request: Callable[[int], Q]
    ) -> tuple[int, R] | None:
        """One point read from the owning shard's queue group, as the router would send it: the
        shard and its reply, or None where the router must answer instead (direct reads off or
        refused, shard count unknown, no replica answering or caught up, any error but a 404).
        A 404 stands only once the shard count it was placed by is known to be current."""
        if not self.direct_reads:
            return None
        num_shards = await self._shards.get()
        if num_shards is None:
            return None
        try:
            shard = place(num_shards)
            return shard, await self._direct_once(op, shard, request(shard))
        except NotFound:
            now = await self._shards.learn(PLACEMENT_RECHECK_S)
            if now is None or now == num_shards:
                raise
            shard = place(now)  # placed by a stale count: ask the shard that owns it now
            try:
                return shard, await self._direct_once(op, shard, request(shard))
            except _NotDirect:
                return None
        except _NotDirect:
            return None

    async def _direct_once(self, op: Op[Q, R], shard: int, request: Q) -> R:
        subject = subjects.shard_endpoint(shard, op.name)
        try:
            # A point read answers in a millisecond: one that has not answered after `hedge_after`
            # was given to a hung replica (or waits for one to catch up), and the router's path,
            # whose requests are hedged, answers it. A short first try rather than a hedge, which
            # costs every read a task (~7% of a direct read's time, measured).
            wait = min(self.timeout, self.hedge_after) if self.hedge_after is not None else self.timeout
            msg = await self.nc.request(subject, _encoder.encode(request), timeout=wait)
        except PermissionDenied:
            # This user's role may not ask the shards (an older server configuration): not again.
            log.info("direct reads: not permitted to request %s; reading through the router", subject)
            self.direct_reads = False
            raise _NotDirect from None
        except (NoRespondersError, NatsTimeout):
            raise _NotDirect from None  # no replica serving: the router waits and retries
        error = error_of(msg.headers, msg.data)
        if error is not None:
            if error.code == NotFound.code:
                raise NotFound(error.description)
            raise _NotDirect  # 503 not caught up, a refused request, ...: the router's answer stands
        return _direct_reply(msg, op.reply)

    @staticmethod
    def _valid(payload: dict[str, Any], request_type: type[Any]) -> bool:
        """The public request's own checks: a request the router would refuse (400) goes to the
        router, so its error is the router's."""
        try:
            msgspec.convert(payload, request_type)
        except msgspec.ValidationError:
            return False
        return True

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
        """One entity by id: from its shard directly (unless `direct_reads` is off), or the router."""
        tokens = after or {}
        payload = {"id": entity_id, "embedding": embedding, "after": tokens, "consistency": consistency}
        if self.direct_reads and self._valid(payload, GetRequest):
            direct = await self._direct(
                GET,
                lambda n: shard_for(entity_id, n),
                lambda s: ShardGet(
                    id=entity_id, embedding=embedding, after=int(tokens.get(str(s), 0)), consistency=consistency
                ),
            )
            if direct is not None:
                return GetReply(entity=direct[1].entity, shard=direct[0])
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
        """Top `k` by cosine similarity, exact. With a `vector` (and `direct_reads` on), every shard
        is asked directly and the answers merged here, as a router does (docs/api.md, "Direct vector
        search"); a `text` is embedded by a router, which answers it."""
        payload: dict[str, Any] = {"k": k, "target": target, "after": after or {}, "consistency": consistency}
        payload |= {"vector": vector} if vector is not None else {"text": text}
        if vector is not None and text is None and self.direct_search and self._valid(payload, VectorSearchRequest):
            direct = await self._search_direct(vector, k, target, after or {}, consistency)
            if direct is not None:
                return direct
        return await self._typed(subjects.SEARCH_VECTOR, SearchReply, payload)

    async def _search_direct(
        self, vector: list[float], k: int, target: str, tokens: Tokens, consistency: Consistency
    ) -> SearchReply | None:
        """`search.vector` as a router answers it, from this process: one message every node answers
        for the shards it serves (`_scatter`), then a `torua.shard.<n>.vector` request for each shard
        still missing, merged with the routers' merge. A shard that does not answer (after one
        retry) makes the reply partial, as through a router; None where the router must answer
        instead (shard count unknown or changed, a shard refusing the request (4xx: the router's
        error is the answer), a reply in parts or that does not decode, this user not permitted to
        ask the shards)."""
        num_shards = await self._shards.get()
        if num_shards is None:
            return None
        # A strong search: one node (serving a shard taken in turn) learns the end of every shard's
        # log, the others search at once and their answers are checked against those ends.
        ends_from = self._scatter_ids % num_shards if consistency == "strong" else None
        scatter = await self._scatter(
            HostedVector(vector=vector, k=k, target=target, shards=list(range(num_shards)),  # type: ignore[arg-type]
                         after=tokens, consistency=consistency, ends_from=ends_from),
            num_shards,
        )
        if scatter is None:
            return None
        encoded: dict[int, bytes] = {}  # by `after`: without tokens every shard gets the same bytes

        def body(shard: int) -> bytes:
            after = int(tokens.get(str(shard), 0))
            data = encoded.get(after)
            if data is None:
                data = encoded[after] = _encoder.encode(
                    ShardVector(vector=vector, k=k, target=target, after=after, consistency=consistency)  # type: ignore[arg-type]
                )
            return data

        missing = [s for s in range(num_shards) if s not in scatter]
        results = dict(zip(missing, await asyncio.gather(
            *(self._shard_search(s, body(s)) for s in missing), return_exceptions=True
        )))
        replies: dict[int, HitsReply] = {}
        status: dict[str, ShardStatus] = {}
        for shard in range(num_shards):
            result = scatter[shard] if shard in scatter else results[shard]
            if isinstance(result, HitsReply):
                replies[shard] = result
                status[str(shard)] = ShardStatus(ok=True, applied_seq=result.applied_seq)
            elif isinstance(result, _ShardFailed):
                status[str(shard)] = ShardStatus(ok=False, error=str(result)[:1000])
            elif isinstance(result, _NotDirect):
                return None
            else:
                raise result  # cancellation, or a bug: never a shard's failure
        if len(replies) < num_shards and await self._shards.learn(PLACEMENT_RECHECK_S) != num_shards:
            return None  # a shard that is not there may be one a stale shard count placed
        return SearchReply(hits=merge_hits(replies, k), partial=len(replies) < num_shards, shards=status)

    async def _scatter(self, request: HostedVector, num_shards: int) -> dict[int, HitsReply] | None:
        """Every node's answer for the shards it serves (`torua.shard.all.vector`), one message out:
        the shards answered, or None where the router must answer (a node refused the request, or
        this user may not send it)."""
        if self._scatter_inbox is None:
            inbox = self.nc.new_inbox()
            await self.nc.subscribe(f"{inbox}.*", cb=self._scattered)
            self._scatter_inbox = inbox
        self._scatter_ids += 1
        token = str(self._scatter_ids)
        gathering = self._scatters[token] = _Scatter(num_shards, request.ends_from is not None)
        # A user the server does not let send it is told so asynchronously: fail fast on it, as a
        # request does (torua.connect.Connection).
        denied = (self.nc.on_denied(subjects.SHARD_VECTOR_ALL, gathering.done) if isinstance(self.nc, Connection)
                  else contextlib.nullcontext())
        try:
            with denied:
                await self.nc.publish(subjects.SHARD_VECTOR_ALL, _encoder.encode(request),
                                      reply=f"{self._scatter_inbox}.{token}")
                await gathering.done
        except PermissionDenied:
            log.info("direct search: not permitted to publish %s; searching through the router", subjects.SHARD_VECTOR_ALL)
            self.direct_search = False
            return None
        finally:
            gathering.close()
            del self._scatters[token]
        if gathering.unasked:
            await self._shards.learn(PLACEMENT_RECHECK_S)  # the router answers this one
            return None
        return None if gathering.refused else gathering.answered()

    async def _scattered(self, msg: Msg) -> None:
        gathering = self._scatters.get(msg.subject.rsplit(".", 1)[-1])
        if gathering is not None:  # None: answered late, after its request went on without it
            gathering.add(msg)

    async def _shard_search(self, shard: int, data: bytes) -> HitsReply:
        """One shard's answer to a direct search; _ShardFailed or _NotDirect otherwise."""
        subject = subjects.shard_endpoint(shard, VECTOR.name)
        why = ""
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(DIRECT_RETRY_S)
            try:
                msg = await self._ask(subject, data, min(self.timeout, DIRECT_SHARD_TIMEOUT_S), hedged=True)
            except PermissionDenied:
                log.info("direct search: not permitted to request %s; searching through the router", subject)
                self.direct_search = False
                raise _NotDirect from None
            except (NoRespondersError, NatsTimeout) as exc:
                why = f"no replica of shard {shard} answered ({type(exc).__name__})"
                continue
            error = error_of(msg.headers, msg.data)
            if error is not None:
                if error.code == Unavailable.code and error.retry_after_ms is None:
                    why = error.description  # not caught up: once more, as a router does
                    continue
                if 400 <= error.code < 500:
                    raise _NotDirect  # the request's fault, the same on every shard: the router's error
                raise _ShardFailed(error.description)  # overloaded (its hint says when), or a 5xx
            return _direct_reply(msg, HitsReply)
        raise _ShardFailed(why)

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
        """A key's value: from its shard directly (unless `direct_reads` is off), or the router."""
        tokens = after or {}
        payload = {"key": key, "after": tokens, "consistency": consistency}
        if self.direct_reads and self._valid(payload, KVGetRequest):
            direct = await self._direct(
                KV_GET,
                lambda n: kv_shard(key, n),
                lambda s: ShardKVGet(key=key, after=int(tokens.get(str(s), 0)), consistency=consistency),
            )
            if direct is not None:
                return direct[1].value
        reply = await self._typed(subjects.KV_GET, KVReply, payload)
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
