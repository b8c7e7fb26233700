"""The leader lease on a real nats-server's KV: terms count up, expiry by the standby's own clock."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client as NATS

from torua import subjects
from torua.streams import ensure_bucket
from torua.wire import LeaderLease
from torua_coordinator.leader import LEADER_SHARE, Lease


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_terms_count_up_and_expiry_uses_the_standbys_clock(nc: NATS) -> None:
    kv = await ensure_bucket(nc)
    a_clock, b_clock = Clock(), Clock()
    a = Lease(kv, "a", ttl=3.0, clock=a_clock)
    b = Lease(kv, "b", ttl=3.0, clock=b_clock)
    assert await a.refresh() and a.epoch == 1
    assert await a.refresh() and a.epoch == 1  # renewal keeps the term
    assert a.valid()
    a_clock.now += 3.0 * LEADER_SHARE + 0.01
    assert not a.valid()  # by its own clock, before any standby may take over

    # The holder's wall-clock expiry says nothing to a standby: only the key not moving for a TTL.
    entry = await kv.get(subjects.KV_LEADER)
    stale = msgspec.structs.replace(msgspec.json.decode(entry.value, type=LeaderLease), expires_at=0.0)
    await kv.update(subjects.KV_LEADER, msgspec.json.encode(stale), last=entry.revision)
    assert not await b.refresh()  # first sight of this revision
    b_clock.now += 2.0
    assert not await b.refresh()
    assert await a.refresh()  # a renews: the key moves, b starts counting again
    b_clock.now += 2.0
    assert not await b.refresh()
    b_clock.now += 3.1
    assert await b.refresh() and b.epoch == 2  # unchanged for a TTL by b's clock: a new term

    # The deposed leader finds another holder and does not renew.
    assert not await a.refresh() and not a.held
    # A process with a's id that never led (a restart) takes a lease in its own name at once;
    # b's lease is not in a's name, so a restarted b would.
    b2 = Lease(kv, "b", ttl=3.0, clock=Clock())
    assert await b2.refresh() and b2.epoch == 3
    assert not await b.refresh()  # the old b lost it: its term moved on


async def test_release_keeps_the_epoch_for_the_next_term(nc: NATS) -> None:
    kv = await ensure_bucket(nc)
    a, b = Lease(kv, "a", ttl=3.0, clock=Clock()), Lease(kv, "b", ttl=3.0, clock=Clock())
    assert await a.refresh()
    assert await a.advance(5) and a.epoch == 5
    await a.release()
    assert await b.refresh() and b.epoch == 6  # free: taken at once, one term later
