"""The look at one shard's log end for a replica's strong reads (shard/readindex.ShardEnd, over its
connection's StreamEnds), on a real nats-server: the same end as JetStream's last message on the
subject, without fetching that message when nothing was written since the earlier look or when the
replica has applied it already, and no trust in an earlier look at another log."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from torua.retention import log_id_of
from torua.streams import ensure_wal_stream
from torua.subjects import WAL_STREAM, wal_subject
from torua_node.shard.readindex import ShardEnd, stream_ends


async def last_on(nc: NATS, shard: int) -> int:
    return (await nc.jetstream().get_last_msg(WAL_STREAM, wal_subject(shard))).seq or 0


async def test_the_end_is_the_subjects_last_sequence_and_an_unchanged_log_costs_no_entry(nc: NATS) -> None:
    await ensure_wal_stream(nc)
    js = nc.jetstream()
    subject = wal_subject(3)
    look = ShardEnd(nc, 3)
    assert (await look.get()).end == 0  # nothing on the subject yet
    big = b"x" * 400_000
    for _ in range(3):
        await js.publish(subject, big)
    await js.publish(wal_subject(4), b"other shard")
    first = await look.get()
    assert first.end == await last_on(nc, 3) == 3
    # The identity replicas store (from nats-py's stream info): equal, or every read would re-check.
    info = await js.stream_info(WAL_STREAM)
    assert info.created is not None and first.log_id == log_id_of(info.created)

    # Nothing new on this subject (another shard's write does not count): the earlier end stands,
    # learnt without the 400 KB entry coming over the wire.
    await js.publish(wal_subject(4), b"other shard")
    before = nc.stats["in_bytes"]
    again = await look.get()
    assert again.end == 3
    assert nc.stats["in_bytes"] - before < 20_000

    # A new entry on the subject: the new end.
    await js.publish(subject, b"new")
    assert (await look.get()).end == await last_on(nc, 3) == 6


async def test_an_entry_the_replica_applied_is_not_fetched(nc: NATS) -> None:
    await ensure_wal_stream(nc)
    js = nc.jetstream()
    subject = wal_subject(2)
    await js.publish(subject, b"first")
    log_id = (await ShardEnd(nc, 2).get()).log_id
    applied = 0
    look = ShardEnd(nc, 2, lambda: (log_id, applied))
    for _ in range(3):
        applied = (await js.publish(subject, b"x" * 400_000)).seq
    before = nc.stats["in_bytes"]
    assert (await look.get()).end == applied  # the replica's own position: nothing after it
    assert nc.stats["in_bytes"] - before < 20_000
    # A position in another log, or beyond the log's end (the log lost entries the replica applied),
    # is not taken for the end, also when the shard is asked beside the stream's info (the stream
    # moved since the shard's end was learnt: written on another shard, seen by another look).
    for position in ((log_id + 1, applied + 3), (log_id, applied + 1000)):
        for _ in range(6):
            await js.publish(wal_subject(4), b"other shard")
        await stream_ends(nc).get([4])

        def told(position: tuple[int, int] = position) -> tuple[int | None, int]:
            return position

        assert (await ShardEnd(nc, 2, told).get()).end == applied


async def test_an_earlier_look_at_another_log_is_not_trusted(nc: NATS) -> None:
    await ensure_wal_stream(nc)
    js = nc.jetstream()
    subject = wal_subject(0)
    for _ in range(5):
        await js.publish(subject, b"old log")
    old_log = 0
    look = ShardEnd(nc, 0, lambda: (old_log, 5))  # a replica that applied the old log's 5 entries
    old = await look.get()
    old_log = old.log_id
    assert old.end == 5

    # The stream re-created with fewer entries: an earlier end (or position) of 5 would hide the new writes.
    await js.delete_stream(WAL_STREAM)
    await ensure_wal_stream(nc)
    await js.publish(subject, b"new log")
    now = await look.get()
    assert now.log_id != old.log_id
    assert now.end == 1
