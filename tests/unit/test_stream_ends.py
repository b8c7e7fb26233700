"""One look at the log for many shards (shard/readindex.StreamEnds), on a real nats-server: each
shard's end equals JetStream's last sequence on its subject; while nothing was written the look is
one STREAM.INFO for all shards; a write to one shard is found by a short question to that shard (and
every other shard's end stands); another log (re-created) is never trusted; concurrent callers
share looks. And the shards' answers merge (torua.shardwire.merge_hits) as one index would answer."""

from __future__ import annotations

import asyncio
from collections import Counter

import numpy as np
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from torua.model import Hit
from torua.retention import log_id_of
from torua.shardwire import HitsReply, merge_hits
from torua.streams import ensure_wal_stream
from torua.subjects import WAL_STREAM, wal_subject
from torua_node.router.readpoint import StreamLogEnds, every_shard, pinned, reading
from torua_node.shard.protocol import ShardTextStats
from torua_node.shard.readindex import StreamEnds


async def last_on(nc: NATS, shard: int) -> int:
    try:
        return (await nc.jetstream().get_last_msg(WAL_STREAM, wal_subject(shard))).seq or 0
    except Exception:  # noqa: BLE001 - nothing on the subject
        return 0


async def js_requests(nc: NATS) -> Counter[str]:
    """JetStream API requests seen on `nc` from now on, by kind (`STREAM.INFO`, `STREAM.MSG`)."""
    seen: Counter[str] = Counter()

    async def count(msg: Msg) -> None:
        seen[".".join(msg.subject.split(".")[2:4])] += 1

    await nc.subscribe("$JS.API.STREAM.>", cb=count)
    await nc.flush()
    return seen


async def settled(nc: NATS) -> None:
    """Every request sent so far has been counted by `js_requests`."""
    await nc.flush()
    await asyncio.sleep(0.05)


async def test_every_shards_end_from_one_look_and_one_question_per_written_shard(nc: NATS) -> None:
    await ensure_wal_stream(nc)
    js = nc.jetstream()
    for shard, n in ((0, 3), (1, 1), (3, 2)):
        for _ in range(n):
            await js.publish(wal_subject(shard), b"x" * 100_000)
    ends = StreamEnds(nc)
    shards = range(4)
    look = await ends.get(shards)
    assert look.ends == {s: await last_on(nc, s) for s in shards}  # shard 2: nothing written, 0
    info = await js.stream_info(WAL_STREAM)
    assert info.created is not None and look.log_id == log_id_of(info.created)

    seen = await js_requests(nc)
    before = nc.stats["in_bytes"]
    for _ in range(3):  # nothing written since: one STREAM.INFO per look, no entry over the wire
        assert (await ends.get(shards)).ends == look.ends
    await settled(nc)
    assert seen == Counter({"STREAM.INFO": 3})
    assert nc.stats["in_bytes"] - before < 3 * 20_000

    # A write to shard 1: found, the other shards' ends stand (one short 404 each).
    seen.clear()
    await js.publish(wal_subject(1), b"new")
    now = await ends.get(shards)
    await settled(nc)
    # After the look's STREAM.INFO: "anything after your end?" per shard, and shard 1's last entry.
    assert seen == Counter({"STREAM.INFO": 1, "STREAM.MSG": 4 + 1})
    assert now.ends == {**look.ends, 1: await last_on(nc, 1)}
    assert now.ends[1] > look.ends[1]
    # Then nothing new again: the next look still asks every shard beside the info (the last one
    # saw writes: while the stream moves, questions go out at once), the one after it is one
    # STREAM.INFO.
    seen.clear()
    assert (await ends.get(shards)).ends == now.ends
    await settled(nc)
    assert seen == Counter({"STREAM.INFO": 1, "STREAM.MSG": 4})
    seen.clear()
    assert (await ends.get(shards)).ends == now.ends
    await settled(nc)
    assert seen == Counter({"STREAM.INFO": 1})
    await ends.close()


async def test_a_look_at_another_log_is_not_trusted(nc: NATS) -> None:
    await ensure_wal_stream(nc)
    js = nc.jetstream()
    for _ in range(5):
        await js.publish(wal_subject(0), b"old log")
    ends = StreamEnds(nc)
    old = await ends.get([0, 1])
    assert old.ends == {0: 5, 1: 0}
    # Re-created, shorter: an earlier end of 5 would hide the new writes.
    await js.delete_stream(WAL_STREAM)
    await ensure_wal_stream(nc)
    await js.publish(wal_subject(1), b"new log")
    await js.publish(wal_subject(0), b"new log")
    now = await ends.get([0, 1])
    assert now.log_id != old.log_id
    assert now.ends == {0: 2, 1: 1}
    await ends.close()


async def test_concurrent_callers_share_looks_and_each_sees_writes_acknowledged_before_it_asked(nc: NATS) -> None:
    await ensure_wal_stream(nc)
    js = nc.jetstream()
    ends = StreamEnds(nc)
    seen = await js_requests(nc)
    looks = await asyncio.gather(*(ends.get([s % 4]) for s in range(40)))
    assert len({id(x) for x in looks}) <= 2  # one look, or two (a caller arriving during the first)
    await settled(nc)
    assert seen["STREAM.INFO"] <= 2
    for i in range(10):
        ack = await js.publish(wal_subject(i % 4), b"w")
        look = await ends.get([i % 4])
        assert look.ends[i % 4] == ack.seq  # acknowledged before the call: reflected
    await ends.close()


async def test_a_read_point_learns_every_shards_end_from_one_look_when_it_prefetches_them(nc: NATS) -> None:
    """A round's shards are pinned one after another (those served here, then each node's batch):
    learnt on demand, a shard asked after the look began waits for a second look; prefetched at the
    start of the read (`every_shard`), all ends come from the one look."""
    await ensure_wal_stream(nc)
    ends = StreamLogEnds(nc)
    seen = await js_requests(nc)
    ask = ShardTextStats(terms=["x"], consistency="strong")

    async def first_round() -> list[int]:
        early = await pinned(0, ask)  # the look begins here...
        late = await asyncio.gather(*(pinned(s, ask) for s in (1, 2, 3)))  # ...these come after it
        return [r.after for r in (early, *late)]

    with reading(ends):
        await first_round()
    await settled(nc)
    assert seen["STREAM.INFO"] == 2
    seen.clear()
    with reading(ends, prefetch=every_shard(4, "strong")):
        await first_round()
    await settled(nc)
    assert seen["STREAM.INFO"] == 1
    assert every_shard(4, "eventual") == range(0)  # eventual reads learn no log end


def test_merged_hits_equal_one_ranking_of_all_shards_answers() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        shards = int(rng.integers(1, 6))
        replies: dict[int, HitsReply] = {}
        every: list[Hit] = []
        for s in range(shards):
            # Coarse scores, so ties across shards are common; each shard's list ranked as it sends it.
            scores = rng.integers(0, 4, int(rng.integers(0, 8))) / 4
            hits = sorted(((f"id{s}-{j}", float(sc)) for j, sc in enumerate(scores)), key=lambda h: (-h[1], h[0]))
            replies[s] = HitsReply(hits=hits, applied_seq=1)
            every += [Hit(id=i, score=sc, shard=s) for i, sc in hits]
        k = int(rng.integers(1, 12))
        assert merge_hits(replies, k) == sorted(every, key=lambda h: (-h.score, h.id))[:k]
