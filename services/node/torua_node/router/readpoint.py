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

A shard whose log did not move at the last look (quiet) need not wait for this look before its
first round: the round is sent at once as an eventual read carrying the identity of the log that
look saw (`early`), and its answer is kept if the replica had applied at least the end this look
then finds, in that same log (`reaches`) — the replica answered at or past it, so it reflects every
write acknowledged before the request, as a pinned round would; otherwise the round is asked
again, pinned. While nothing is written that saves the look's round trip from the first round of
every strong read at a read point; a shard being written keeps the plain order (look, then ask).

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
from torua.model import Consistency
from torua.tasks import retrieved
from torua_node.shard.protocol import ShardRequest
from torua_node.shard.readindex import LogEnd, LogLook, StreamEnds, stream_ends

__all__ = ["LogEnds", "StreamLogEnds", "ReadPoint", "reading", "pinned", "early", "reaches", "at_read_point", "every_shard"]

Q = TypeVar("Q", bound=ShardRequest)
R = TypeVar("R")

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

    def quiet(self, shard: int) -> bool:
        """Whether the shard's log did not move between the last two looks at it (what `early` bets on)."""
        return False

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

    def early(self, shard: int, request: Q) -> Q | None:
        """`request` (strong) to send now, before the shard's log end is known, or None: its end is
        known already (pinning costs nothing), or the last look did not see the log quiet."""
        if self._fetch(shard).done() or not self._ends.quiet(shard):
            return None
        log_id = self._ends.log_id(shard)
        if log_id is None:
            return None
        return msgspec.structs.replace(request, consistency="eventual", log_id=log_id)

    async def reaches(self, shard: int, sent: ShardRequest, applied_seq: int | None) -> bool:
        """Whether an answer to `early`'s request, as of `applied_seq`, is one at this read point: at
        or past the end this look finds, in the log the request named."""
        if applied_seq is None:
            return False
        try:
            end = await self.end(shard)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the pinned round that follows says why
            return False
        return self._ends.log_id(shard) == sent.log_id and applied_seq >= end

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


def every_shard(num_shards: int, consistency: Consistency) -> range:
    """What a strong read whose first round asks every shard prefetches (`reading`): all their log
    ends from one look. Learnt as each round's request is sent, the shards asked after the look
    began (a node's batch is pinned after the shards served here) would wait for a second look."""
    return range(num_shards) if consistency == "strong" else range(0)


async def pinned(shard: int, request: Q) -> Q:
    """`request` at the current request's read point, if it has one."""
    point = _current.get()
    return request if point is None else await point.pin(shard, request)


def early(shard: int, request: Q) -> Q | None:
    """`request` to send before the current read point knows the shard's log end (`ReadPoint.early`),
    or None: send `await pinned(shard, request)`."""
    point = _current.get()
    return None if point is None or request.consistency != "strong" else point.early(shard, request)


async def reaches(shard: int, sent: ShardRequest, reply: object) -> bool:
    """Whether `reply`, the answer to `early(shard, ...)`'s request `sent`, is a strong one."""
    point = _current.get()
    seq = getattr(reply, "applied_seq", None)
    return point is not None and await point.reaches(shard, sent, seq if isinstance(seq, int) else None)


async def at_read_point(shard: int, request: Q, send: Callable[[Q], Awaitable[R]]) -> R:
    """`send(request)` at the current read point: at once when `early` allows and its answer
    `reaches` the point, else pinned."""
    first = early(shard, request)
    if first is not None:
        try:
            reply = await send(first)
        except Unavailable:
            pass  # e.g. the replica follows another log than the last look saw: pinned below
        else:
            if await reaches(shard, first, reply):
                return reply
    return await send(await pinned(shard, request))


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
        self._last: dict[int, int] = {}  # each shard's end at its latest look
        self._quiet: set[int] = set()  # shards whose end did not move at their latest look

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
                found = look.result()
                at = found.ends.get(shard, 0)
                moved = found.log_id != self._log_ids.get(shard) or at != self._last.get(shard)
                (self._quiet.discard if moved else self._quiet.add)(shard)
                self._log_ids[shard], self._last[shard] = found.log_id, at
                end.set_result(at)

        self._stream.next((shard,)).add_done_callback(settle)
        end.add_done_callback(retrieved)  # a prefetched shard no round reads: its error is nobody's
        return end

    def log_id(self, shard: int) -> int | None:
        return self._log_ids.get(shard)

    def quiet(self, shard: int) -> bool:
        return shard in self._quiet


async def _no_fetch(shard: int) -> int:
    raise AssertionError("StreamLogEnds learns ends by its stream look")
