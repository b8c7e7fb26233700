"""`ShardClient`: the one seam between the router, retrieval and query code and the shards.

Everything above it (the data API, graph reads, search, retrieval) speaks the router–shard protocol
(`torua_node.shard.protocol`) through these few methods, so it runs the same over NATS
(`NatsShardClient`) and over an in-memory fake in unit tests.

- `call(shard, op, request, timeout?)`: one request to one shard's queue group. A shard whose replica
  serves in this process (`LocalCalls`, the node's `LocalReads`) is answered there by the shard
  endpoint's own handler, without a message; one not serving here is asked over NATS as below, and
  a 503 from one here counts as the first answer (asked once more, over NATS). Over NATS, a request
  with no answer after a second is asked again while it waits (`torua.hedge`: a hung member of the
  queue group holds what it is given until NATS drops it; not queries); a 503 (no
  replica caught up), no responders or a timeout is retried once after 50 ms — not a 503 from a full
  queue (`Overloaded`), which is raised at once; after that, or for any other error reply, the error
  is raised as the `ToruaError` of its code. A reply too large for one message arrives in parts
  (`protocol.PAGED_HEADER`): the others are fetched from the replica that holds them and joined.
- `fan_out(op, requests, status)`: the shards' requests concurrently, under the one error policy
  of `torua_node.router.fanout` (shared with distributed Cypher execution): a client error (4xx,
  the request's fault, the same on every shard) is raised; anything else (503, timeout, no
  responders, 5xx) marks that shard `ok=False` with the reason in `status` and the reply becomes
  partial — never a silent gap; a shard that failed is not asked again in the same request. Over
  NATS, the shards served here are asked in-process, and the others' requests go in one message per
  node (`torua.shard.node.<id>.batch`, `NodeShards`) where one node serves several of them; a shard
  that node does not answer (`left`), or every shard of a node that does not answer at all, is asked
  of its queue group as above; a 503 in its answer counts as the shard's first, and the shard is
  asked once more.
- Within a read point (`router/readpoint.py`), each shard's request is pinned to the log end the
  point learnt for it, or sent before that is known where the point allows (`readpoint.early`: the
  shard's log was quiet), its answer kept if it `reaches` the point and asked again, pinned, if not.
- `token(tokens, shard)`: the write token a read carries for one shard (`after`, 0: no wait).

`EmbedderProvider` is the other thing the read and write paths need from the cluster: the embedder
for texts the router embeds, whose dimension is the shard map's and whose kind is the node's settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Protocol, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from torua import subjects
from torua.embedders import EmbedderSettings, make_embedder
from torua.embedding import Embedder
from torua.endpoints import encode, error_of
from torua.errors import Overloaded, ToruaError, Unavailable, error_for_code
from torua.hashing import shard_for
from torua.hedge import HEDGE_AFTER_S, HedgeBudget, hedged_request
from torua.model import Tokens
from torua.tasks import retrieved
from torua.wire import Reply, ShardMap
from torua_node.router.fanout import Status, gather, is_partial
from torua_node.router.readpoint import LogEnds, StreamLogEnds, at_read_point, early, pinned, reaches
from torua_node.shard.protocol import (
    PAGED_HEADER,
    QUERY,
    NodeShards,
    NodeShardsReply,
    Op,
    ShardPage,
    ShardRequest,
    page_subject,
)

__all__ = [
    "ShardClient",
    "NatsShardClient",
    "LocalCalls",
    "EmbedderProvider",
    "ClusterEmbedder",
    "Status",
    "by_owner",
    "is_partial",
    "token",
    "SHARD_TIMEOUT_S",
    "RETRY_AFTER_S",
]

Q = TypeVar("Q", bound=ShardRequest)
R = TypeVar("R", bound=Reply)

SHARD_TIMEOUT_S = 5.0  # per shard request; with the one retry a dead shard costs about twice this
RETRY_AFTER_S = 0.05


def token(tokens: Tokens, shard: int) -> int:
    """The write token a request carries for one shard (0: no wait)."""
    return int(tokens.get(str(shard), 0))


class ShardClient(Protocol):
    """Requests to the shards of the current shard map. Implementations subclass this to inherit
    `owner` and `fan_out`, so every one of them applies the same fan-out policy."""

    # Where the router learns shards' log ends for requests run at one read point
    # (`router/readpoint.py`); None: replicas learn them themselves.
    log_ends: LogEnds | None = None

    @property
    def num_shards(self) -> int:
        """Shards in the current map; Unavailable while there is none."""
        ...

    async def call(self, shard: int, op: Op[Q, R], request: Q, timeout: float | None = None) -> R:
        """One request to one shard; an error reply is raised as the ToruaError of its code.
        `timeout`: seconds to wait for the answer instead of the client's default."""
        ...

    def owner(self, key: str) -> int:
        """The shard an entity id (or a chunk's document id, or a key) lives in."""
        return shard_for(key, self.num_shards)

    async def fan_out(self, op: Op[Q, R], requests: Mapping[int, Q], status: Status) -> dict[int, R]:
        """One request per shard, concurrently; answers by shard, failures recorded in `status`.
        Within `readpoint.reading`, strong requests are sent at the request's read point."""

        async def one(shard: int, request: Q) -> R:
            return await at_read_point(shard, request, partial(self.call, shard, op))

        return await gather({s: partial(one, s, req) for s, req in requests.items()}, status)


def by_owner(client: ShardClient, keys: Iterable[str]) -> dict[int, list[str]]:
    """Keys grouped by the shard that owns them, in first-seen order within a group."""
    groups: dict[int, list[str]] = {}
    n = client.num_shards  # once, not per key: a k-hop read groups hundreds of ids per round
    for key in keys:
        groups.setdefault(shard_for(key, n), []).append(key)
    return groups


class LocalCalls(Protocol):
    """The shard replicas serving in this process (the node's `LocalReads`): `op` answered by the
    replica's own endpoint handler, in-process, under the same rules; None: no replica here serves
    it now (none hosted, or not serving), so ask the shard's queue group. Errors, 503s included, are
    raised as the `ToruaError` the same answer over NATS would be (a 503 then counts as the shard's
    first answer); replies are only read, never changed."""

    @property
    def node_id(self) -> str:
        """This node's id (in the shard map)."""
        ...

    def serving(self, shard: int) -> bool:
        """Whether a replica of `shard` serves here now."""
        ...

    async def call(self, shard: int, op: Op[Q, R], request: Q) -> R | None: ...


class NatsShardClient(ShardClient):
    """Shard requests over NATS to `torua.shard.<n>.<op>` (the shard's queue group: any live,
    caught-up replica answers), or in-process to a replica serving here (`local`)."""

    def __init__(self, nc: NATS, shardmap: Callable[[], ShardMap | None], timeout: float = SHARD_TIMEOUT_S,
                 local: LocalCalls | None = None, per_node: bool = True) -> None:
        self.nc = nc
        self._shardmap = shardmap
        self.timeout = timeout
        self.log_ends: LogEnds | None = StreamLogEnds(nc)
        self.local = local
        self.per_node = per_node  # a round's requests to other nodes in one message each (`_batch`)
        self._turn = 0  # spreads rounds over a shard's replicas on other nodes
        self._placement: tuple[ShardMap, dict[int, list[str]]] | None = None
        # Requests to a queue group asked again while a hung member holds them (torua.hedge); not
        # queries, whose parts may run for long by nature (a hedge would double their cost).
        self.hedge_after: float | None = HEDGE_AFTER_S
        self.hedges = HedgeBudget()

    async def fan_out(self, op: Op[Q, R], requests: Mapping[int, Q], status: Status) -> dict[int, R]:
        """As `ShardClient.fan_out`; shards served here in-process (`call`), and the requests to shards
        of one other node in one message to it (`_batch`) where it serves more than one of them."""
        by_node = self._by_node([s for s in requests if (st := status.get(str(s))) is None or st.ok])
        if not by_node:
            return await super().fan_out(op, requests, status)
        # Sent before the read point knows their log ends where it may (readpoint.early).
        first = {s: sent for s, r in requests.items() if (sent := early(s, r)) is not None}
        batches = {node: asyncio.ensure_future(self._batch(node, op, {s: first.get(s) or requests[s] for s in shards}))
                   for node, shards in by_node.items()}
        for task in batches.values():
            task.add_done_callback(retrieved)  # a round cancelled meanwhile: its failure is nobody's
        node_of = {s: node for node, shards in by_node.items() for s in shards}

        async def one(shard: int, request: Q) -> R:
            node = node_of.get(shard)
            if node is None:
                return await at_read_point(shard, request, partial(self.call, shard, op))
            got = (await batches[node]).get(shard)
            if _first_try_failed(got):
                return await self._again(shard, op, encode(await pinned(shard, request)), self.timeout)
            if isinstance(got, ToruaError):
                raise got
            sent = first.get(shard)
            if got is not None and (sent is None or await reaches(shard, sent, got)):
                return got
            # Left by the node, or sent early and answered behind the read point: asked again, pinned.
            return await self.call(shard, op, await pinned(shard, request))

        return await gather({s: partial(one, s, req) for s, req in requests.items()}, status)

    def _by_node(self, shards: list[int]) -> dict[str, list[int]]:
        """The shards (not served here) that share a serving node with another, grouped by one node
        each: the nodes serving most of them first (fewest messages), equal ones taken in turn."""
        local = self.local
        if local is None or not self.per_node or len(shards) < 2:
            return {}
        smap = self._shardmap()
        if smap is None:
            return {}
        if self._placement is None or self._placement[0] is not smap:
            self._placement = (smap, {e.id: list(e.active or e.hosts()) for e in smap.shards})
        where = self._placement[1]
        me = local.node_id
        left = {s: [n for n in where.get(s, ()) if n != me] for s in shards if not local.serving(s)}
        if all(len(nodes) <= 1 for nodes in left.values()):  # one replica elsewhere each (R=1): no choice
            by: dict[str, list[int]] = {}
            for s, nodes in left.items():
                if nodes:
                    by.setdefault(nodes[0], []).append(s)
            return {n: group for n, group in by.items() if len(group) > 1}
        self._turn += 1
        groups: dict[str, list[int]] = {}
        while len(left) > 1:
            count: dict[str, int] = {}
            for nodes in left.values():
                for n in nodes:
                    count[n] = count.get(n, 0) + 1
            if not count:
                break
            ranked = sorted(count)
            turn = self._turn % len(ranked)
            node = max(ranked, key=lambda n: (count[n], -((ranked.index(n) - turn) % len(ranked))))
            if count[node] < 2:
                break  # a message for one shard is its queue group's
            groups[node] = [s for s, nodes in left.items() if node in nodes]
            for s in groups[node]:
                del left[s]
        return groups

    async def _batch(self, node: str, op: Op[Q, R], requests: dict[int, Q]) -> dict[int, R | ToruaError]:
        """One message to `node` for these shards (each at the request's read point): the replies and
        errors it sent, by shard. A shard missing from the answer — left by the node, or all of them
        when it did not answer — is the caller's to ask its queue group. Never raises but for
        cancellation."""
        try:
            asks = {s: msgspec.Raw(encode(await pinned(s, r))) for s, r in requests.items()}
            data = encode(NodeShards(op=op.name, shards=asks))
            msg = await self.nc.request(subjects.shard_node(node), data, timeout=self.timeout)
            if error_of(msg.headers, msg.data) is not None:
                return {}  # busy, or a node that does not know the operation: the queue groups answer
            answer = msgspec.json.decode(msg.data, type=NodeShardsReply)
            out: dict[int, R | ToruaError] = {}
            for s, raw in answer.shards.items():
                if s in requests:
                    out[s] = msgspec.json.decode(raw, type=op.reply)
            for s, err in answer.errors.items():
                if s in requests:
                    out[s] = error_for_code(err.code, err.description, err.retry_after_ms)
            return out
        except (NoRespondersError, NatsTimeout, ToruaError, msgspec.DecodeError, msgspec.ValidationError):
            return {}

    def shardmap(self) -> ShardMap:
        smap = self._shardmap()
        if smap is None:
            raise Unavailable("this node has not received the shard map yet; retry")
        return smap

    @property
    def num_shards(self) -> int:
        return self.shardmap().num_shards

    async def call(self, shard: int, op: Op[Q, R], request: Q, timeout: float | None = None) -> R:
        wait = timeout or self.timeout
        if self.local is not None:
            # The handler's own waits bound it (a strong read's wait, a query's time limit).
            try:
                reply = await self.local.call(shard, op, request)
            except Unavailable as exc:
                if not _first_try_failed(exc):
                    raise
                return await self._again(shard, op, encode(request), wait)
            if reply is not None:
                return reply
        data = encode(request)
        # The one retry by hand: tenacity's AsyncRetrying, built per call, cost about 80 µs of the
        # event loop per shard request (a 3-hop read makes dozens, a retrieval a hundred).
        try:
            return await self._request(shard, op, data, wait)
        except Overloaded:
            raise  # a full queue is answered at once: retries would only add to the load
        except Unavailable:
            pass
        return await self._again(shard, op, data, wait)

    async def _again(self, shard: int, op: Op[Q, R], data: bytes, timeout: float) -> R:
        """The one retry after a 503 (from a replica here, a node's batch or the queue group): over
        NATS after a pause, where another replica may answer."""
        await asyncio.sleep(RETRY_AFTER_S)
        return await self._request(shard, op, data, timeout)

    async def _request(self, shard: int, op: Op[Q, R], data: bytes, timeout: float) -> R:
        try:
            after = None if op is QUERY else self.hedge_after
            msg = await hedged_request(self.nc, subjects.shard_endpoint(shard, op.name), data, timeout, after, self.hedges)
        except (NoRespondersError, NatsTimeout) as exc:
            raise Unavailable(f"no replica of shard {shard} answered ({type(exc).__name__})") from None
        err = error_of(msg.headers, msg.data)
        if err is not None:
            raise error_for_code(err.code, err.description, err.retry_after_ms)
        paged = (msg.headers or {}).get(PAGED_HEADER)
        if paged is None:
            return msgspec.json.decode(msg.data, type=op.reply)
        return msgspec.json.decode(await self._rest(shard, paged, msg.data, timeout), type=op.reply)

    async def _rest(self, shard: int, paged: str, first: bytes, timeout: float) -> bytes:
        """A reply too large for one message: the other parts, from the replica that holds them."""
        try:
            cursor, node, count = paged.split()
            parts = int(count)
        except ValueError:
            raise Unavailable(f"shard {shard} sent a malformed {PAGED_HEADER} header: {paged!r}") from None
        data = [first]
        for part in range(1, parts):
            try:
                msg = await self.nc.request(page_subject(shard, node), encode(ShardPage(cursor=cursor, part=part)),
                                            timeout=timeout)
            except (NoRespondersError, NatsTimeout) as exc:
                raise Unavailable(f"shard {shard} replica on {node} did not send part {part} of its reply "
                                  f"({type(exc).__name__})") from None
            err = error_of(msg.headers, msg.data)
            if err is not None:
                raise error_for_code(err.code, err.description, err.retry_after_ms)
            data.append(msg.data)
        return b"".join(data)


def _first_try_failed(answer: object) -> bool:
    """A 503 that another try may not get: not caught up in time, stopping (not a full queue, which
    is answered at once and retrying would only add to)."""
    return isinstance(answer, Unavailable) and not isinstance(answer, Overloaded)


class EmbedderProvider(Protocol):
    """The cluster's embedder (made on first use, and again if the cluster's dimension changes)."""

    @property
    def dim(self) -> int:
        """The cluster's embedding dimension, known without making the embedder."""
        ...

    def __call__(self) -> Embedder: ...


class ClusterEmbedder:
    """The embedder the node's settings configure, at the dimension of the current shard map."""

    def __init__(self, settings: EmbedderSettings, dim: Callable[[], int]) -> None:
        self.settings = settings
        self._dim = dim
        self._embedder: Embedder | None = None

    @property
    def dim(self) -> int:
        return self._dim()

    def __call__(self) -> Embedder:
        dim = self._dim()
        if self._embedder is None or self._embedder.dim != dim:
            self._embedder = make_embedder(dim, self.settings)
        return self._embedder
