"""`ShardClient`: the one seam between the router, retrieval and query code and the shards.

Everything above it (the data API, graph reads, search, retrieval) speaks the router–shard protocol
(`torua_node.shard.protocol`) through these few methods, so it runs the same over NATS
(`NatsShardClient`) and over an in-memory fake in unit tests.

- `call(shard, op, request, timeout?)`: one request to one shard's queue group. Over NATS, a 503 (no
  replica caught up), no responders or a timeout is retried once after 50 ms — not a 503 from a full
  queue (`Overloaded`), which is raised at once; after that, or for any other error reply, the error
  is raised as the `ToruaError` of its code. A reply too large for one message arrives in parts
  (`protocol.PAGED_HEADER`): the others are fetched from the replica that holds them and joined.
- `fan_out(op, requests, status)`: one request per shard, concurrently, under the one error policy
  of `torua_node.router.fanout` (shared with distributed Cypher execution): a client error (4xx,
  the request's fault, the same on every shard) is raised; anything else (503, timeout, no
  responders, 5xx) marks that shard `ok=False` with the reason in `status` and the reply becomes
  partial — never a silent gap; a shard that failed is not asked again in the same request.
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
from torua.errors import Overloaded, Unavailable, error_for_code
from torua.hashing import shard_for
from torua.model import Tokens
from torua.wire import Reply, ShardMap
from torua_node.router.fanout import Status, gather, is_partial
from torua_node.router.readpoint import LogEnds, StreamLogEnds, pinned
from torua_node.shard.protocol import PAGED_HEADER, Op, ShardPage, ShardRequest, page_subject

__all__ = [
    "ShardClient",
    "NatsShardClient",
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
            return await self.call(shard, op, await pinned(shard, request))

        return await gather({s: partial(one, s, req) for s, req in requests.items()}, status)


def by_owner(client: ShardClient, keys: Iterable[str]) -> dict[int, list[str]]:
    """Keys grouped by the shard that owns them, in first-seen order within a group."""
    groups: dict[int, list[str]] = {}
    n = client.num_shards  # once, not per key: a k-hop read groups hundreds of ids per round
    for key in keys:
        groups.setdefault(shard_for(key, n), []).append(key)
    return groups


class NatsShardClient(ShardClient):
    """Shard requests over NATS to `torua.shard.<n>.<op>` (the shard's queue group: any live,
    caught-up replica answers)."""

    def __init__(self, nc: NATS, shardmap: Callable[[], ShardMap | None], timeout: float = SHARD_TIMEOUT_S) -> None:
        self.nc = nc
        self._shardmap = shardmap
        self.timeout = timeout
        self.log_ends: LogEnds | None = StreamLogEnds(nc)

    def shardmap(self) -> ShardMap:
        smap = self._shardmap()
        if smap is None:
            raise Unavailable("this node has not received the shard map yet; retry")
        return smap

    @property
    def num_shards(self) -> int:
        return self.shardmap().num_shards

    async def call(self, shard: int, op: Op[Q, R], request: Q, timeout: float | None = None) -> R:
        data = encode(request)
        wait = timeout or self.timeout
        # The one retry by hand: tenacity's AsyncRetrying, built per call, cost about 80 µs of the
        # event loop per shard request (a 3-hop read makes dozens, a retrieval a hundred).
        try:
            return await self._request(shard, op, data, wait)
        except Overloaded:
            raise  # a full queue is answered at once: retries would only add to the load
        except Unavailable:
            await asyncio.sleep(RETRY_AFTER_S)
        return await self._request(shard, op, data, wait)

    async def _request(self, shard: int, op: Op[Q, R], data: bytes, timeout: float) -> R:
        try:
            msg = await self.nc.request(subjects.shard_endpoint(shard, op.name), data, timeout=timeout)
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
