"""One fan-out, one error policy: every read that asks several shards at once goes through `gather`.

Its users are the router's ShardClient (`torua_node.router.client`: graph reads, search, retrieval)
and distributed query execution (`torua_node.router.query`).

The policy, per shard asked:

- **answer**: kept; the shard's status is `ok`, with the `applied_seq` the answer is as of (when a
  request reads a shard several times, the oldest: that is what the whole reply is as of).
- **client error** — a `ToruaError` whose code is 4xx (400 bad input, 404, 408, 409, 413): raised,
  the first in shard order. It is the request's fault and the same on every shard, so answering
  with the other shards' part would hide the mistake.
- **anything else** — 503 (no replica caught up, or none answered: the client has already retried
  once), a timeout, no responders, a 5xx, a reply that does not decode: that shard is marked
  `ok=False` with the reason in `status`, and the reply becomes partial (`partial: true`). Never a
  silent gap. Errors that are not Torua's are logged with their traceback.
- a shard already marked failed in `status` is not asked again within the same request: the reply is
  partial anyway, and a dead shard then costs one deadline, not one per round of a multi-round read.

Cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from torua.errors import ToruaError
from torua.model import ShardStatus

__all__ = ["Status", "gather", "answered", "fail", "is_client_error", "is_partial", "reason", "MAX_REASON_LEN"]

log = logging.getLogger(__name__)

R = TypeVar("R")
Status = dict[str, ShardStatus]  # shard (as a string, like JSON keys) -> how it answered
MAX_REASON_LEN = 1000


def is_client_error(exc: BaseException) -> bool:
    """The request's fault (a 4xx): the same on every shard, so raised rather than made partial."""
    return isinstance(exc, ToruaError) and 400 <= exc.code < 500


def reason(exc: BaseException) -> str:
    """What a failed shard's status says: Torua's description, or the exception's type and text."""
    if isinstance(exc, ToruaError):
        text = exc.description
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_REASON_LEN]


def fail(status: Status, shard: int, why: str) -> None:
    """Mark a shard failed; the first reason is kept."""
    seen = status.get(str(shard))
    if seen is None or seen.ok:
        status[str(shard)] = ShardStatus(ok=False, error=why[:MAX_REASON_LEN])


def is_partial(status: Status) -> bool:
    return any(not st.ok for st in status.values())


def answered(status: Status, shard: int, applied_seq: int | None) -> None:
    """Record an answer of `shard` as of `applied_seq` (one of several rounds: the oldest counts)."""
    seen = status.get(str(shard))
    if seen is None:
        status[str(shard)] = ShardStatus(ok=True, applied_seq=applied_seq)
    elif seen.ok and seen.applied_seq is not None and applied_seq is not None:
        seen.applied_seq = min(seen.applied_seq, applied_seq)


def _applied_seq(reply: object) -> int | None:
    seq = getattr(reply, "applied_seq", None)
    return seq if isinstance(seq, int) else None


async def gather(calls: Mapping[int, Callable[[], Awaitable[R]]], status: Status) -> dict[int, R]:
    """Run one call per shard concurrently under the policy above; the answers by shard."""
    shards = [s for s in calls if status.get(str(s), ShardStatus(ok=True)).ok]
    results = await asyncio.gather(*(calls[s]() for s in shards), return_exceptions=True)
    out: dict[int, R] = {}
    for s, r in zip(shards, results):
        if not isinstance(r, BaseException):
            out[s] = r
            answered(status, s, _applied_seq(r))
        elif not isinstance(r, Exception):
            raise r  # cancellation, KeyboardInterrupt: never a shard's failure
        elif is_client_error(r):
            raise r
        else:
            if not isinstance(r, (ToruaError, TimeoutError)):
                log.warning("shard %d failed unexpectedly; the reply is partial", s, exc_info=r)
            fail(status, s, reason(r))
    return out
