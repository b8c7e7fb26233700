"""Hedged requests: a read with no answer after a while is asked again, and the first answer wins.

NATS gives a queue group's requests to its members at random, and keeps a member that hangs (a
paused VM, a stuck disk) in the group until the server has sent it two PINGs it did not answer,
10-20 s with Torua's server configuration (docs/operations.md, "A hung node"). Until then, each
request it is given waits out its whole timeout. Asked again, a request most likely goes to another
member; the same one again is possible, so it is asked again after each `after` seconds without an
answer, while the budget allows. Only reads are hedged: asking twice changes nothing.

The budget (`HedgeBudget`, as gRPC throttles its retries): each request earns `share` of a hedge,
up to `burst` in hand, and each hedge spends one; so where a whole cluster is slow, which hedging
cannot help, the hedges add at most `share` as many requests again, while one hung member among
two or three is covered. Used by the Python client (its reads through routers and its direct reads
of shards) and by routers (their requests to a shard's queue group).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from torua.connect import Connection

__all__ = ["HEDGE_AFTER_S", "HEDGE_BURST", "HEDGE_SHARE", "HedgeBudget", "hedged_request"]

HEDGE_AFTER_S = 1.0
"""Seconds without an answer before a read is asked again: Torua's reads answer in milliseconds, so
a hedge is rare and the load it adds small."""

HEDGE_SHARE = 0.5
"""Hedges each request earns."""

HEDGE_BURST = 30.0
"""Hedges that may be in hand at most: enough for one client reading in a row through the 15-20 s a
hung node stays in its queue groups (about two hedges a read, measured)."""


@dataclass(slots=True)
class HedgeBudget:
    """Hedges in hand: earned by requests, spent by hedges (module docstring)."""

    share: float = HEDGE_SHARE
    burst: float = HEDGE_BURST
    tokens: float = HEDGE_BURST

    def earn(self) -> None:
        self.tokens = min(self.burst, self.tokens + self.share)

    def can_spend(self) -> bool:
        return self.tokens >= 1

    def spend(self) -> None:
        self.tokens -= 1


async def hedged_request(
    nc: NATS, subject: str, data: bytes, timeout: float, after: float | None, budget: HedgeBudget
) -> Msg:
    """`nc.request(subject, data, timeout)`, asked again every `after` seconds that pass without an
    answer while `budget` allows (None: never); the first answer wins and the other requests are
    dropped. Fails as the first request would, once none is left that may still answer."""
    if after is None or after >= timeout:
        return await nc.request(subject, data, timeout=timeout)
    budget.earn()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # A client's connection fails at once a request the server does not let it send (torua.connect):
    # that check is kept here, around all the requests, rather than in each (a task more each).
    denied: asyncio.Future[Msg] = loop.create_future()
    ask: Callable[..., Coroutine[Any, Any, Msg]] = nc.request
    watch: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if isinstance(nc, Connection):
        watch, ask = nc.on_denied(subject, denied), functools.partial(NATS.request, nc)
    asked = [asyncio.ensure_future(ask(subject, data, timeout=timeout))]
    pending: set[asyncio.Future[Msg]] = set(asked)
    try:
        with watch:
            while pending:
                hedge = budget.can_spend() and loop.time() + after < deadline
                done, pending = await asyncio.wait(
                    pending | {denied}, timeout=after if hedge else None, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(denied)
                if denied in done:
                    return denied.result()  # raises PermissionDenied
                for answer in done:
                    if answer.exception() is None:
                        return answer.result()
                if not done:  # no answer in time, and none failed: ask once more
                    budget.spend()
                    again = asyncio.ensure_future(ask(subject, data, timeout=deadline - loop.time()))
                    asked.append(again)
                    pending.add(again)
        raise next(e for e in (a.exception() for a in asked) if e is not None)
    finally:
        for request in (*asked, denied):
            if not request.done():
                request.cancel()
