"""Strong reads without tokens: a replica learns the current end of its shard's log before it answers.

Like etcd's ReadIndex. A write is acknowledged once JetStream has stored it, so the last sequence of
the shard's log subject, read after a request arrived, covers every write acknowledged before that;
the replica then waits until it has applied that far. Concurrent reads share one look at the log,
but never one that began before they arrived (it might miss a write acknowledged in between):
a read that arrives while a look is in flight waits for the next one (`LogEnd`).

One way to look (`StreamEnds`, one per connection: a node's replicas, searches and router share
it): the stream's info, and per shard a question only when the shard may have been written since
its end was learnt, so a strong read costs one short JetStream request while nothing is written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js.errors import APIError, ServiceUnavailableError

from torua.retention import log_id_of
from torua.subjects import WAL_STREAM, wal_subject
from torua.tasks import retrieved

__all__ = ["LogEnd", "LogState", "LogLook", "StreamEnds", "stream_ends", "ShardEnd"]

T = TypeVar("T")

JS_API = "$JS.API"  # nats-py's default JetStream API prefix, which every Torua connection uses
JS_TIMEOUT_S = 5.0  # nats-py's default for JetStream API requests


class LogEnd(Generic[T]):
    """The end of one log (or what `fetch` says of it), fetched on demand, batched across
    concurrent callers."""

    def __init__(self, fetch: Callable[[], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._next: asyncio.Future[T] | None = None  # the fetch new callers wait for (not yet begun)
        self._runner: asyncio.Task[None] | None = None

    async def get(self) -> T:
        """A log end read after this call began; raises what the fetch raised."""
        return await asyncio.shield(self.next())

    def next(self) -> asyncio.Future[T]:
        """The future of the fetch that begins after this call (shared: shield it before awaiting
        it from a task that may be cancelled)."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(retrieved)
        waiting = self._next
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="log-end")
        return waiting

    async def _run(self) -> None:
        while self._next is not None:
            # From here on, new callers wait for the following fetch: this one may have begun
            # before they arrived.
            batch, self._next = self._next, None
            try:
                end = await self._fetch()
            except asyncio.CancelledError:
                batch.cancel()
                raise
            except Exception as exc:  # noqa: BLE001 - handed to every caller of this batch
                batch.set_exception(exc)
            else:
                batch.set_result(end)

    async def close(self) -> None:
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._next is not None and not self._next.done():
            self._next.cancel()


# --- the ends of shards' logs, one look for all -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogState:
    """One shard's log as a look found it: the log's identity (creation time,
    `torua.retention.log_id_of`) and the last sequence on the shard's subject (`end`)."""

    log_id: int
    end: int


@dataclass(frozen=True, slots=True)
class LogLook:
    """What one look at the log found for several shards: its identity, each asked shard's end, and
    the stream's last sequence."""

    log_id: int
    ends: dict[int, int]
    last: int = 0


class StreamEnds:
    """The ends of the shards' logs that this process reads, learnt together: one STREAM.INFO for
    all of them while nothing was written, shared by concurrent callers, never a look that began
    before the caller asked (`LogEnd`). The one way Torua learns a log end for a strong read:
    replicas' reads (`ShardEnd`), the node's searches and routers' read points all use their
    connection's (`stream_ends`).

    For each shard it remembers its end and a stream position `through` up to which that end is
    known to be the last entry of the shard's subject (no entry of the shard in `(end, through]`).
    A look asks the stream's info: a shard whose `through` reaches the stream's last sequence keeps
    its end, with no request of its own (so while nothing is written a look is one short request).
    Any other shard is asked "is there an entry after your end?" (a short 404 when not; only if
    there is is its last entry fetched, which brings the whole entry): beside the info when its
    `through` is already behind the last sequence seen by an earlier look (the question is needed
    whatever the info says) or while the stream moves (the last look saw writes: asked at once, a
    look under writes costs the info and the question side by side, not one after the other),
    after the info otherwise. Every question is sent after
    the look began, so what it finds holds for every write acknowledged before the callers asked.
    JetStream may answer a question sent beside the info before the info, so its answer holds
    through the last sequence an earlier look saw (`seen`), not through the info's; one sent after
    the info's answer holds through the info's. A caller may say what it knows (a replica: the
    position it applied, an entry of its shard in its log), which spares fetching an entry it has
    already applied.

    Another log (re-created: another identity) forgets everything known of the old one; a log
    whose last sequence is below a known end (it lost entries) forgets that end, and a caller's
    position beyond the log's end is not used: the end found is then below what the caller
    applied, which a replica takes as a sign to check its log (`ShardReplica.wait_strong`)."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._log_id: int | None = None
        self._last = 0  # the stream's last sequence in the newest info received (log `_log_id`)
        self._moving = False  # that info showed writes since the info before it
        self._ends: dict[int, int] = {}
        self._through: dict[int, int] = {}
        # The next look's shards, each with the positions its callers know (log identity, sequence).
        self._wanted: dict[int, list[tuple[int | None, int]]] = {}
        self._look: LogEnd[LogLook] = LogEnd(self._fetch)

    async def get(self, shards: Iterable[int], known: Mapping[int, tuple[int | None, int]] | None = None) -> LogLook:
        """The log's identity and these shards' ends, read after this call began. `known`: per
        shard, a position (log identity, sequence) known to hold an entry of the shard."""
        return await asyncio.shield(self.next(shards, known))

    def next(self, shards: Iterable[int], known: Mapping[int, tuple[int | None, int]] | None = None) -> asyncio.Future[LogLook]:
        """The future of the look that begins after this call, which includes these shards (shared:
        shield it before awaiting it from a task that may be cancelled)."""
        for shard in shards:
            self._wanted.setdefault(shard, [])
        for shard, position in (known or {}).items():
            self._wanted.setdefault(shard, []).append(position)
        return self._look.next()

    async def _fetch(self) -> LogLook:
        # One look at a time (LogEnd's runner), so the remembered state is updated in order. Taken
        # before the first await: exactly the callers of this look (they asked before it began).
        wanted, self._wanted = self._wanted, {}
        log_id, seen = self._log_id, self._last
        # Asked beside the info: the shards whose end is not known through the last sequence an
        # earlier look saw, and every shard while the stream moves (the last look saw writes: the
        # info will most likely show more). Each question is sent after that info was received, so
        # what it finds holds through `seen` as well (if the log is still `log_id`: the info tells).
        early = {
            s: asyncio.ensure_future(self._end_after(s, self._known(s, log_id, wanted[s])))
            for s in wanted
            if log_id is not None and (self._moving or s not in self._ends or self._through.get(s, -1) < seen)
        }
        try:
            info = _decode_info(await _api(self._nc, f"{JS_API}.STREAM.INFO.{WAL_STREAM}", b""))
            if info.error is not None:
                raise _api_error(info.error)
            answers = dict(zip(early, await asyncio.gather(*early.values()))) if early else {}
        except BaseException:
            for question in early.values():
                question.cancel()
            await asyncio.gather(*early.values(), return_exceptions=True)
            raise
        now, last = log_id_of(_utc(info.created)), info.state.last_seq
        if now != log_id:  # another log: nothing known of the old one holds, nor what was asked of it
            self._ends.clear()
            self._through.clear()
            answers.clear()
        for shard in [s for s, end in self._ends.items() if end > last]:  # the log lost entries
            del self._ends[shard]
            self._through.pop(shard, None)
        self._moving = now == log_id and last > seen
        self._log_id, self._last = now, last
        later: list[tuple[int, int | None]] = []
        for shard, positions in wanted.items():
            answer = answers.get(shard)
            if answer is not None and (answer[1] is None or answer[1] <= last):
                self._learnt(shard, answer[0], seen)
            elif shard not in self._ends or self._through.get(shard, -1) < last:
                later.append((shard, self._known(shard, now, positions, last)))
        if later:
            found = await asyncio.gather(*(self._end_after(s, k) for s, k in later))
            for (shard, _), (end, _) in zip(later, found):
                self._learnt(shard, end, last)  # asked after the info: holds through `last`
        return LogLook(now, {s: self._ends.get(s, 0) for s in wanted}, last)

    def _known(self, shard: int, log_id: int | None, positions: list[tuple[int | None, int]],
               last: int | None = None) -> int | None:
        """The highest position known to hold an entry of the shard in the log `log_id` and not
        beyond its last sequence `last`: the remembered end and the callers' positions."""
        known = [self._ends[shard]] if shard in self._ends else []
        known += [seq for lid, seq in positions if lid is not None and lid == log_id and seq]
        return max((k for k in known if last is None or k <= last), default=None)

    async def _end_after(self, shard: int, known: int | None) -> tuple[int, int | None]:
        """(the shard's end as JetStream answers, `known`): "is there an entry after `known`?"
        (None: nothing known), and only if there is, the last entry's sequence."""
        subject = wal_subject(shard)
        if known is not None and await _seq_of(self._nc, {"seq": known + 1, "next_by_subj": subject}) is None:
            return known, known
        return await _seq_of(self._nc, {"last_by_subj": subject}) or 0, known

    def _learnt(self, shard: int, end: int, through: int) -> None:
        """The shard's end is `end`, with no entry of the shard after it through stream position
        `through`."""
        self._ends[shard] = end
        self._through[shard] = max(through, end)

    async def close(self) -> None:
        await self._look.close()


_shared: weakref.WeakKeyDictionary[NATS, StreamEnds] = weakref.WeakKeyDictionary()


def stream_ends(nc: NATS) -> StreamEnds:
    """The `StreamEnds` of this connection: the node's replicas and its router share one."""
    ends = _shared.get(nc)
    if ends is None:
        ends = _shared[nc] = StreamEnds(nc)
    return ends


class ShardEnd:
    """One shard's log end for a replica's strong reads: its connection's `StreamEnds`, told the
    replica's position (`position()`: the log it follows and the sequence it applied)."""

    def __init__(self, nc: NATS, shard: int, position: Callable[[], tuple[int | None, int]] | None = None) -> None:
        self._nc = nc
        self.shard = shard
        self._position = position

    async def get(self) -> LogState:
        """The shard's log and its end, read after this call began."""
        known = {self.shard: self._position()} if self._position is not None else None
        look = await stream_ends(self._nc).get((self.shard,), known)
        return LogState(look.log_id, look.ends.get(self.shard, 0))

    async def close(self) -> None:
        """Nothing of its own: the connection's look is shared (and ends with its callers)."""


async def _api(nc: NATS, subject: str, payload: bytes) -> bytes:
    try:
        msg = await nc.request(subject, payload, timeout=JS_TIMEOUT_S)
    except NoRespondersError:
        raise ServiceUnavailableError from None
    return msg.data


async def _seq_of(nc: NATS, request: dict[str, int | str]) -> int | None:
    """The sequence of the message a STREAM.MSG.GET request finds, None if none (its data is not
    decoded)."""
    reply = _decode_msg_get(await _api(nc, f"{JS_API}.STREAM.MSG.GET.{WAL_STREAM}", _encode(request)))
    if reply.error is not None:
        if reply.error.code == 404:
            return None
        raise _api_error(reply.error)
    return reply.message.seq if reply.message is not None else None


def _utc(created: str) -> dt.datetime:
    # JetStream gives nanoseconds; the identity keeps microseconds truncated, as nats-py parses them.
    head, _, frac = created.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Seq(msgspec.Struct):
    seq: int = 0


class _MsgGetReply(msgspec.Struct):
    message: _Seq | None = None  # its data and headers are skipped, not decoded
    error: _ApiError | None = None


class _StreamState(msgspec.Struct):
    last_seq: int = 0


class _InfoReply(msgspec.Struct):
    created: str = "1970-01-01T00:00:00Z"
    state: _StreamState = msgspec.field(default_factory=_StreamState)
    error: _ApiError | None = None


def _api_error(err: _ApiError) -> APIError:
    return APIError(code=err.code, err_code=err.err_code, description=err.description)


_encode = msgspec.json.Encoder().encode
_decode_msg_get = msgspec.json.Decoder(_MsgGetReply).decode
_decode_info = msgspec.json.Decoder(_InfoReply).decode
