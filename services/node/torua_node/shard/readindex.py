"""Strong reads without tokens: a replica learns the current end of its shard's log before it answers.

Like etcd's ReadIndex. A write is acknowledged once JetStream has stored it, so the last sequence of
the shard's log subject, read after a request arrived, covers every write acknowledged before that;
the replica then waits until it has applied that far. Concurrent reads share one JetStream request,
but never one that began before they arrived (it might miss a write acknowledged in between):
a read that arrives while a request is in flight waits for the next one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.js.errors import APIError, ServiceUnavailableError

from torua.retention import log_id_of
from torua.subjects import WAL_STREAM, wal_subject

__all__ = ["LogEnd", "LogState", "log_state", "LogLook", "StreamEnds", "stream_ends"]

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
            self._next.add_done_callback(_retrieve)
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


def _retrieve(fut: asyncio.Future[T]) -> None:
    # Every caller may have gone (cancelled while shielded): asyncio must not report the error.
    if not fut.cancelled():
        fut.exception()


# --- the end of one shard's log, cheaply -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogState:
    """What one look at the log found: its identity (creation time, `torua.retention.log_id_of`),
    the stream's last sequence, and the last sequence on the shard's subject (`end`)."""

    log_id: int
    stream_last: int
    end: int


async def log_state(nc: NATS, subject: str, known: LogState | None) -> LogState:
    """The log's state now, given an earlier look `known` (None: none).

    JetStream's "last message on a subject" returns the whole entry (up to a megabyte, base64),
    which made a strong point read cost several round trips' worth of bytes. So the question asked
    is smaller: is there an entry on the subject after `known.end`? Usually there is none, and the
    answer is a short 404; only when there is does the last entry get fetched. The stream's info,
    asked at the same time, tells whether the log is still the one `known` looked at (re-created:
    another identity; shrunk: a last sequence below `known.end`) — then `known` says nothing."""
    info_reply, next_seq = await asyncio.gather(
        _api(nc, f"{JS_API}.STREAM.INFO.{WAL_STREAM}", b""),
        _seq_of(nc, {"seq": known.end + 1, "next_by_subj": subject}) if known is not None and known.end else _none(),
    )
    info = _decode_info(info_reply)
    if info.error is not None:
        raise _api_error(info.error)
    state = LogState(log_id=log_id_of(_utc(info.created)), stream_last=info.state.last_seq, end=0)
    same_log = known is not None and known.log_id == state.log_id and state.stream_last >= known.end
    if same_log and known is not None and known.end and next_seq is None:
        return LogState(state.log_id, state.stream_last, known.end)
    end = await _seq_of(nc, {"last_by_subj": subject})
    return LogState(state.log_id, state.stream_last, end or 0)


# --- the ends of many shards' logs, one look for all -------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLook:
    """What one look at the log found for several shards: its identity and each shard's end."""

    log_id: int
    ends: dict[int, int]


class StreamEnds:
    """The ends of every shard's log that this process reads, learnt together: one STREAM.INFO for
    all of them while nothing was written, shared by concurrent callers, never a look that began
    before the caller asked (`LogEnd`).

    For each shard it remembers its end and a stream position `through` up to which that end is
    known to be the last entry of the shard's subject (no entry of the shard in `(end, through]`).
    A look asks the stream's last sequence first; a shard whose `through` reaches it has the same
    end, with no request of its own. Only a shard whose `through` is behind is looked at further,
    after that answer (so what it finds holds through it): is there an entry after its end
    (a short 404 when not), and only if there is, the last one. Another log (re-created: another
    identity) or one that shrank below a known end forgets what was known of it.

    So a search asking every shard a node serves costs one short JetStream request per look
    instead of two per shard (`log_state`, which point reads still use)."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._log_id: int | None = None
        self._ends: dict[int, int] = {}
        self._through: dict[int, int] = {}
        self._wanted: set[int] = set()
        self._look: LogEnd[LogLook] = LogEnd(self._fetch)

    async def get(self, shards: Iterable[int]) -> LogLook:
        """The log's identity and these shards' ends, read after this call began."""
        return await asyncio.shield(self.next(shards))

    def next(self, shards: Iterable[int]) -> asyncio.Future[LogLook]:
        """The future of the look that begins after this call, which includes these shards (shared:
        shield it before awaiting it from a task that may be cancelled)."""
        self._wanted.update(shards)
        return self._look.next()

    async def _fetch(self) -> LogLook:
        # One look at a time (LogEnd's runner), so the remembered state is updated in order.
        info = _decode_info(await _api(self._nc, f"{JS_API}.STREAM.INFO.{WAL_STREAM}", b""))
        if info.error is not None:
            raise _api_error(info.error)
        log_id, last = log_id_of(_utc(info.created)), info.state.last_seq
        if log_id != self._log_id:
            self._log_id = log_id
            self._ends.clear()
            self._through.clear()
        for shard in [s for s, end in self._ends.items() if end > last]:  # the log lost entries
            del self._ends[shard]
            self._through.pop(shard, None)
        behind = [s for s in self._wanted if self._through.get(s, -1) < last]
        if behind:
            await asyncio.gather(*(self._look_at(s, last) for s in behind))
        return LogLook(log_id, dict(self._ends))

    async def _look_at(self, shard: int, last: int) -> None:
        """Shard `shard`'s end as of stream position `last` or later (asked after `last` was read)."""
        subject = wal_subject(shard)
        known = self._ends.get(shard)
        if known is not None and await _seq_of(self._nc, {"seq": known + 1, "next_by_subj": subject}) is None:
            self._through[shard] = last
            return
        end = await _seq_of(self._nc, {"last_by_subj": subject}) or 0
        self._ends[shard] = end
        self._through[shard] = max(last, end)

    async def close(self) -> None:
        await self._look.close()


_shared: weakref.WeakKeyDictionary[NATS, StreamEnds] = weakref.WeakKeyDictionary()


def stream_ends(nc: NATS) -> StreamEnds:
    """The `StreamEnds` of this connection: every replica of a node shares one."""
    ends = _shared.get(nc)
    if ends is None:
        ends = _shared[nc] = StreamEnds(nc)
    return ends


async def _none() -> None:
    return None


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
