"""Strong reads without tokens: a replica learns the current end of its shard's log before it answers.

Like etcd's ReadIndex. A write is acknowledged once JetStream has stored it, so the last sequence of
the shard's log subject, read after a request arrived, covers every write acknowledged before that;
the replica then waits until it has applied that far. Concurrent reads share one JetStream request,
but never one that began before they arrived (it might miss a write acknowledged in between):
a read that arrives while a request is in flight waits for the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["LogEnd"]


class LogEnd:
    """The end of one log, fetched on demand, batched across concurrent callers."""

    def __init__(self, fetch: Callable[[], Awaitable[int]]) -> None:
        self._fetch = fetch
        self._next: asyncio.Future[int] | None = None  # the fetch new callers wait for (not yet begun)
        self._runner: asyncio.Task[None] | None = None

    async def get(self) -> int:
        """A log end read after this call began; raises what the fetch raised."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            self._next.add_done_callback(_retrieve)
        waiting = self._next
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="log-end")
        return await asyncio.shield(waiting)

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


def _retrieve(fut: asyncio.Future[int]) -> None:
    # Every caller may have gone (cancelled while shielded): asyncio must not report the error.
    if not fut.cancelled():
        fut.exception()
