"""ReadIndex batching (shard/readindex.py): every caller gets a log end fetched after it called, and
callers share fetches."""

from __future__ import annotations

import asyncio

import pytest

from torua_node.shard.readindex import LogEnd


class Log:
    """A log whose end grows by one per fetch; each fetch waits until the test releases it."""

    def __init__(self) -> None:
        self.end = 0
        self.fetches = 0
        self.begun: asyncio.Queue[int] = asyncio.Queue()  # one item per fetch that began
        self.gate = asyncio.Semaphore(0)  # one release per fetch allowed to finish
        self.fail: BaseException | None = None

    async def fetch(self) -> int:
        self.fetches += 1
        self.end += 1
        seen = self.end  # what the fetch reads is the end when it began
        self.begun.put_nowait(seen)
        await self.gate.acquire()
        if self.fail is not None:
            raise self.fail
        return seen

    async def began(self) -> int:
        return await asyncio.wait_for(self.begun.get(), 5)

    def finish(self) -> None:
        self.gate.release()


async def test_a_caller_arriving_during_a_fetch_waits_for_the_next_one() -> None:
    log = Log()
    ends = LogEnd(log.fetch)
    first = asyncio.create_task(ends.get())
    await log.began()  # fetch 1 is in flight, it read end 1
    second = asyncio.create_task(ends.get())  # arrives after fetch 1 began: a write may have come in between
    await asyncio.sleep(0)
    log.finish()
    assert await first == 1
    await log.began()  # fetch 2 began after `second` arrived
    log.finish()
    assert await second == 2
    assert log.fetches == 2


async def test_callers_arriving_before_a_fetch_begins_share_it() -> None:
    log = Log()
    ends = LogEnd(log.fetch)
    calls = [asyncio.create_task(ends.get()) for _ in range(50)]
    await log.began()
    log.finish()
    assert await asyncio.gather(*calls) == [1] * 50
    assert log.fetches == 1


async def test_callers_during_a_fetch_share_the_following_one() -> None:
    log = Log()
    ends = LogEnd(log.fetch)
    first = asyncio.create_task(ends.get())
    await log.began()
    later = [asyncio.create_task(ends.get()) for _ in range(20)]
    await asyncio.sleep(0)
    log.finish()
    await log.began()
    log.finish()
    assert await first == 1 and await asyncio.gather(*later) == [2] * 20
    assert log.fetches == 2


async def test_a_failed_fetch_fails_its_callers_and_the_next_call_fetches_again() -> None:
    log = Log()
    ends = LogEnd(log.fetch)
    log.fail = ConnectionError("nats gone")
    call = asyncio.create_task(ends.get())
    await log.began()
    log.finish()
    with pytest.raises(ConnectionError):
        await call
    log.fail = None
    call = asyncio.create_task(ends.get())
    await log.began()
    log.finish()
    assert await call == 2


async def test_a_cancelled_caller_does_not_cancel_the_others() -> None:
    log = Log()
    ends = LogEnd(log.fetch)
    gone, stays = asyncio.create_task(ends.get()), asyncio.create_task(ends.get())
    await log.began()
    gone.cancel()
    log.finish()
    assert await stays == 1
    assert gone.cancelled()
    await ends.close()
