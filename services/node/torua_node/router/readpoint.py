"""One read point per request: a multi-round strong read learns each shard's log end once, at the router.

A strong read must reflect every write acknowledged before it was sent. A replica answering a
strong request learns the end of its shard's log itself (`shard/readindex.py`) — once per request it
receives, so a read of several rounds (a k-hop traversal, BM25's two rounds, retrieval) made every
shard fetch its log end again in every round.

Within `reading()`, the router does it instead: the first time the request needs a shard, it learns
the end of that shard's log (JetStream's last sequence on `torua.wal.<shard>`), and every strong
request of it to that shard is sent as `after = max(token, end)` with consistency "eventual" — the
mode in which a replica only waits until it has applied `after`. The end is read after the request
arrived, so it covers every write acknowledged before that: the same guarantee, one fetch per shard
per request. Concurrent requests share fetches as replicas' reads do (`LogEnd`: never one that began
before the caller asked). Eventual requests are sent as they are.

The read point lives in a context variable, as the request's own: the tasks a request starts (its
concurrent fan-outs) inherit it, and nothing between the handler and `ShardClient.fan_out` has to
carry it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS

from torua.errors import Unavailable
from torua_node.shard.protocol import ShardRequest
from torua_node.shard.readindex import LogEnd, LogLook, StreamEnds, stream_ends

__all__ = ["LogEnds", "StreamLogEnds", "ReadPoint", "reading", "pinned"]

Q = TypeVar("Q", bound=ShardRequest)

_current: ContextVar[ReadPoint | None] = ContextVar("torua_read_point", default=None)


class LogEnds:
    """The end of every shard's log, fetched on demand and shared by concurrent callers, but never a
    fetch that began before the caller asked (it might miss a write acknowledged in between): a
    caller arriving while a fetch is in flight gets the next one: a `shard/readindex.LogEnd` per
    shard, handing out the shared future itself so that a request's later rounds need no task."""

    def __init__(self, fetch: Callable[[int], Awaitable[int]]) -> None:
        self._fetch = fetch
        self._ends: dict[int, LogEnd[int]] = {}

    def log_id(self, shard: int) -> int | None:
        """The identity of the log the shard's latest end was read from, if known."""
        return None

    def next_end(self, shard: int) -> asyncio.Future[int]:
        """The shard's log end as read by a fetch that begins after this call."""
        end = self._ends.get(shard)
        if end is None:
            end = self._ends[shard] = LogEnd(functools.partial(self._fetch, shard))
        return end.next()


class ReadPoint:
    """One request's position per shard: the log end learnt the first time the request needed it."""

    def __init__(self, ends: LogEnds) -> None:
        self._ends = ends
        self._fetches: dict[int, asyncio.Future[int]] = {}

    def prefetch(self, shards: Iterable[int]) -> None:
        """Begin learning these shards' log ends now, beside the request's first round: a later
        round that reads a shard for the first time then finds its end known instead of waiting a
        JetStream round trip for it."""
        for shard in shards:
            self._fetch(shard)

    def _fetch(self, shard: int) -> asyncio.Future[int]:
        fetch = self._fetches.get(shard)
        if fetch is None or (fetch.done() and (fetch.cancelled() or fetch.exception() is not None)):
            # A failed fetch is not kept: a later round of the request may learn the end after all.
            fetch = self._fetches[shard] = self._ends.next_end(shard)
        return fetch

    async def end(self, shard: int) -> int:
        fetch = self._fetch(shard)
        if fetch.done():
            return fetch.result()  # the rounds after the first
        # Shielded: a cancelled round must not cancel the fetch other rounds and requests wait for.
        return await asyncio.shield(fetch)

    async def pin(self, shard: int, request: Q) -> Q:
        """`request` as sent at this read point: a strong one waits for the log end instead of
        fetching it again."""
        if request.consistency != "strong":
            return request
        try:
            end = await self.end(shard)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - NATS unreachable or the stream missing: retryable
            raise Unavailable(
                f"could not learn the end of shard {shard}'s log ({type(exc).__name__}); retry, or read with "
                "consistency eventual"
            ) from None
        return msgspec.structs.replace(
            request, after=max(request.after, end), consistency="eventual", log_id=self._ends.log_id(shard)
        )


@contextmanager
def reading(ends: LogEnds | None, prefetch: Iterable[int] = ()) -> Iterator[None]:
    """Run a request's shard reads at one read point (none: replicas learn their log ends), learning
    the log ends of the `prefetch` shards at once (ReadPoint.prefetch)."""
    point = ReadPoint(ends) if ends is not None else None
    if point is not None:
        point.prefetch(prefetch)
    token = _current.set(point)
    try:
        yield
    finally:
        _current.reset(token)


async def pinned(shard: int, request: Q) -> Q:
    """`request` at the current request's read point, if it has one."""
    point = _current.get()
    return request if point is None else await point.pin(shard, request)


class StreamLogEnds(LogEnds):
    """Log ends from one look at the whole stream for every shard at once (`shard/readindex.StreamEnds`,
    shared with this process's replicas, the one way strong reads learn log ends): while nothing was
    written since the last look, a request's eight shards cost one short JetStream reply; a shard
    written meanwhile costs one or two more."""

    def __init__(self, nc: NATS) -> None:
        super().__init__(_no_fetch)
        self._nc = nc
        self._stream: StreamEnds | None = None  # the connection's, on first use
        self._log_ids: dict[int, int] = {}

    def next_end(self, shard: int) -> asyncio.Future[int]:
        if self._stream is None:
            self._stream = stream_ends(self._nc)
        end: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def settle(look: asyncio.Future[LogLook]) -> None:
            if end.done():
                return
            if look.cancelled():
                end.cancel()
            elif (exc := look.exception()) is not None:
                end.set_exception(exc)
            else:
                self._log_ids[shard] = look.result().log_id
                end.set_result(look.result().ends.get(shard, 0))

        self._stream.next((shard,)).add_done_callback(settle)
        end.add_done_callback(_retrieved)  # a prefetched shard no round reads: its error is nobody's
        return end

    def log_id(self, shard: int) -> int | None:
        return self._log_ids.get(shard)


async def _no_fetch(shard: int) -> int:
    raise AssertionError("StreamLogEnds learns ends by its stream look")


def _retrieved(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled():
        fut.exception()
